"""User administration (approving registrations, giving roles) with an audit row per change.

Django admin already runs each change form inside ``transaction.atomic``; the audit row is added
in that transaction, after the user and its groups are saved.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django_otp.plugins.otp_totp.admin import TOTPDeviceAdmin
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal.accounts.roles import ADMIN, REVIEWER, TECHNOLOGIST
from portal.actions.events import log_event

User = get_user_model()


def _approve_with_role(role: str) -> Any:
    """A bulk action: activate the selected accounts and put each in ``role`` (audited per user)."""

    def action(model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        group = Group.objects.get(name=role)
        with transaction.atomic():
            for user in queryset.select_for_update():
                before = {"is_active": user.is_active, "groups": sorted(user.groups.values_list("name", flat=True))}
                user.is_active = True
                user.is_staff = user.is_staff or role == ADMIN
                user.save(update_fields=["is_active", "is_staff"])
                user.groups.add(group)
                log_event(
                    "user.admin_change",
                    actor=request.user,
                    obj=user,
                    request=request,
                    data={
                        "bulk_action": f"approve as {role}",
                        "before": before,
                        "is_active": True,
                        "groups": sorted(user.groups.values_list("name", flat=True)),
                    },
                )
        model_admin.message_user(request, f"{queryset.count()} account(s) activated as {role}.", messages.SUCCESS)

    action.__name__ = f"approve_as_{role}"
    action.short_description = f"Activate and give the role: {role}"  # type: ignore[attr-defined]
    return action


class AuditedUserAdmin(UserAdmin):
    list_display = ("username", "email", "first_name", "last_name", "roles", "is_active", "is_staff", "date_joined")
    list_filter = ("is_active", "groups", "is_staff")
    actions = [_approve_with_role(TECHNOLOGIST), _approve_with_role(REVIEWER), _approve_with_role(ADMIN)]

    @admin.display(description="Roles")
    def roles(self, user: Any) -> str:
        return ", ".join(sorted(g.name for g in user.groups.all())) or "(none: cannot use the portal)"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).prefetch_related("groups")

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        user = form.instance
        log_event(
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


class AuditedTOTPDeviceAdmin(TOTPDeviceAdmin):
    """django-otp's device admin (keys and QR codes hidden: OTP_ADMIN_HIDE_SENSITIVE_DATA), with an
    audit row for each removed device: removing one is how an admin handles a lost phone."""

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        _audit_device_removal(request, [obj])
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        _audit_device_removal(request, list(queryset))
        super().delete_queryset(request, queryset)


def _audit_device_removal(request: HttpRequest, devices: list[Any]) -> None:
    for device in devices:
        log_event("user.otp_removed", actor=request.user, obj=device.user, request=request, data={"device": device.pk})


admin.site.unregister(TOTPDevice)
admin.site.register(TOTPDevice, AuditedTOTPDeviceAdmin)
