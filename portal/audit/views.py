"""The audit log in the portal, for users with audit.view_auditevent: filter by object, actor, action."""

from __future__ import annotations

from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from portal.audit.models import AuditEvent
from portal.audit.registry import ACTIONS

FILTERS = ("object_type", "object_id", "actor_username", "action")


@permission_required("audit.view_auditevent", raise_exception=True)
def event_list(request: HttpRequest) -> HttpResponse:
    events = AuditEvent.objects.all()
    active = {}
    for name in FILTERS:
        value = request.GET.get(name, "").strip()
        if value:
            events = events.filter(**{name: value})
            active[name] = value
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    query = "&".join(f"{k}={v}" for k, v in active.items())
    return render(
        request,
        "audit/event_list.html",
        {"page": page, "active": active, "actions": sorted(ACTIONS.items()), "query": query},
    )
