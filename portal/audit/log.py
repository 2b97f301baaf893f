"""Writing audit rows. Only the domain actions (portal.actions) and the auth signal handlers call this."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.http import HttpRequest

from portal.audit.models import AuditEvent
from portal.audit.registry import ACTIONS

__all__ = ["client_ip", "record"]


def client_ip(request: HttpRequest | None) -> str | None:
    """The client's address (REMOTE_ADDR; a proxy in front must set it correctly)."""
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def record(
    action: str,
    *,
    actor: Any = None,
    obj: models.Model | None = None,
    data: dict[str, Any] | None = None,
    request: HttpRequest | None = None,
    object_type: str = "",
    object_id: str = "",
    object_repr: str = "",
) -> AuditEvent:
    """Append one audit row. ``action`` must be registered in portal.audit.registry."""
    if action not in ACTIONS:
        raise ValueError(f"unregistered audit action {action!r}")
    if actor is None and request is not None and request.user.is_authenticated:
        actor = request.user
    if actor is not None and not getattr(actor, "is_authenticated", False):
        actor = None
    if obj is not None:
        object_type = object_type or obj._meta.model_name or ""
        object_id = object_id or str(obj.pk)
        object_repr = object_repr or str(obj)[:200]
    return AuditEvent.objects.create(
        actor=actor,
        actor_username=actor.get_username() if actor is not None else "",
        action=action,
        object_type=object_type,
        object_id=object_id,
        object_repr=object_repr[:200],
        data=data or {},
        ip_address=client_ip(request),
    )
