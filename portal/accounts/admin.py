"""User administration (approving registrations, giving roles) with an audit row per change.

Django admin already runs each change form inside ``transaction.atomic``; the audit row is added
in that transaction, after the user and its groups are saved.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.http import HttpRequest

from portal import actions

User = get_user_model()


class AuditedUserAdmin(UserAdmin):
    list_display = ("username", "email", "first_name", "last_name", "is_active", "is_staff", "date_joined")
    list_filter = ("is_active", "is_staff", "groups")

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        user = form.instance
        actions.log_event(
            "user.admin_change" if change else "user.admin_create",
            actor=request.user,
            obj=user,
            request=request,
            data={
                "changed": sorted(f for f in form.changed_data if "password" not in f),
                "is_active": user.is_active,
                "is_staff": user.is_staff,
                "groups": sorted(user.groups.values_list("name", flat=True)),
            },
        )


admin.site.unregister(User)
admin.site.register(User, AuditedUserAdmin)
