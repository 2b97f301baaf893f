"""The audit log in Django admin: read-only (no add, change or delete)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from portal.audit.models import AuditEvent

__all__ = ["AuditEventAdmin", "ReadOnlyAdmin"]


class ReadOnlyAdmin(admin.ModelAdmin):
    """Patient data is shown in admin but changed only through the portal (portal.actions, audited)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "actor_username", "action", "object_type", "object_id", "object_repr", "ip_address")
    list_filter = ("action", "object_type")  # codes: portal.audit.registry
    search_fields = ("actor_username", "object_repr", "object_id")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in AuditEvent._meta.fields]
