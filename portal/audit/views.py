"""The audit log in the portal, for users with audit.view_auditevent.

Filters: object, user, action, a date range, and "changes only" (hides the reads,
portal.audit.registry.READS: views of records, lists, searches, the printable report, which otherwise
dominate the log). Event data is shown as readable key: value lines, not a Python dict.
"""

from __future__ import annotations

import datetime
import json
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from portal.audit.models import AuditEvent
from portal.audit.registry import ACTIONS, READS

FILTERS = ("object_type", "object_id", "actor_username", "action")


def readable(data: Any, prefix: str = "") -> list[str]:
    """Event data as "key: value" lines (nested keys dotted), for people rather than parsers."""
    if isinstance(data, dict):
        lines: list[str] = []
        for key, value in data.items():
            lines += (
                readable(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}: {_text(value)}"]
            )
        return lines
    return [_text(data)] if data not in (None, "", [], {}) else []


def _text(value: Any) -> str:
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return f"{value[0]} → {value[1]}"  # a field change [old, new]
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _date(value: str) -> datetime.date | None:
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        return None


@permission_required("audit.view_auditevent", raise_exception=True)
def event_list(request: HttpRequest) -> HttpResponse:
    events = AuditEvent.objects.all()
    active: dict[str, str] = {}
    for name in FILTERS:
        value = request.GET.get(name, "").strip()
        if value:
            events = events.filter(**{name: value})
            active[name] = value
    start, end = _date(request.GET.get("start", "")), _date(request.GET.get("end", ""))
    if start:
        events = events.filter(created_at__date__gte=start)
        active["start"] = start.isoformat()
    if end:
        events = events.filter(created_at__date__lte=end)
        active["end"] = end.isoformat()
    if request.GET.get("changes_only"):
        events = events.exclude(action__in=READS)
        active["changes_only"] = "1"
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    for event in page:
        event.lines = readable(event.data)  # type: ignore[attr-defined]
    return render(
        request,
        "audit/event_list.html",
        {"page": page, "active": active, "actions": sorted(ACTIONS.items()), "query": urlencode(active)},
    )
