"""Audit rows for logins, logouts and failed logins."""

from __future__ import annotations

from typing import Any

from axes.signals import user_locked_out
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from portal.actions.events import log_event


@receiver(user_logged_in)
def _logged_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    log_event("user.login", actor=user, obj=user, request=request)


@receiver(user_logged_out)
def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None:
        log_event("user.logout", actor=user, obj=user, request=request)


@receiver(user_locked_out)
def _locked_out(
    sender: Any, request: Any = None, username: str | None = None, ip_address: str | None = None, **kwargs: Any
) -> None:
    log_event(
        "user.locked_out",
        actor=None,
        request=request,
        object_type="user",
        data={"username": str(username)[:150], "ip_address": ip_address or ""},
    )


@receiver(user_login_failed)
def _login_failed(sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any) -> None:
    log_event(
        "user.login_failed", actor=None, request=request, data={"username": str(credentials.get("username"))[:150]}
    )
