"""Audit rows without another write: reads (view, search, export), auth events and refused writes."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.http import HttpRequest

from portal.audit.log import record

__all__ = ["User", "log_event", "log_refusal", "refusal_reason"]

User = Any  # the configured user model instance


def log_event(
    action: str,
    *,
    actor: Any,
    obj: models.Model | None = None,
    data: dict[str, Any] | None = None,
    request: HttpRequest | None = None,
    object_type: str = "",
    object_id: str = "",
) -> None:
    """Audit a read (view, search, export) or an auth event; reads change nothing else."""
    with transaction.atomic():
        record(action, actor=actor, obj=obj, data=data, request=request, object_type=object_type, object_id=object_id)


def refusal_reason(exc: Exception) -> str:
    """Why an action refused, in words: a validation error's messages joined, else the exception's text."""
    return "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)


def log_refusal(action: str, actor: User, obj: Any, request: HttpRequest | None, exc: Exception, **data: Any) -> None:
    """Audit a refused write (``<what>_refused``) with ``data`` and the reason (500 characters at most)."""
    log_event(
        action,
        actor=None if isinstance(actor, AnonymousUser) else actor,
        obj=obj,
        request=request,
        data={**data, "reason": refusal_reason(exc)[:500]},
    )
