"""The TOTP second factor (django-otp's TOTP devices): who needs it, and checking a code, audited.

Reviewers sign results off and admins manage accounts, so a stolen password alone must not be enough
for them. One rule decides who needs a code: a member of a role in roles.SECOND_FACTOR_ROLES, a
superuser, Django-admin staff, or anyone holding the sign-off permission directly. The web pages
(views.otp_setup / otp_verify), the middleware and the API token endpoint all call ``check_code``,
so refusals, throttling and their audit rows are the same everywhere.
"""

from __future__ import annotations

import enum
from base64 import b32encode
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal.accounts.roles import SECOND_FACTOR_ROLES
from portal.actions.events import log_event

__all__ = [
    "CodeResult",
    "check_code",
    "confirmed_device",
    "enrolment_device",
    "is_required",
    "needs_second_factor",
    "secret_base32",
]

SIGN_OFF_PERMISSION = "analyses.sign_off_analysis"


class CodeResult(enum.Enum):
    OK = "ok"
    WRONG = "wrong"
    THROTTLED = "throttled"


def is_required() -> bool:
    """PORTAL_OTP_REQUIRED (default on; settings refuse it off unless DEBUG is on)."""
    return bool(getattr(settings, "PORTAL_OTP_REQUIRED", True))


#: how long a process may reuse its answer to "does this user need a code?" (a role given meanwhile
#: takes effect within this time, without a query on every request of a polling page). Kept in Django's
#: cache, not in the session: a session write per check would make concurrent requests of one page
#: (an image and its heatmaps) write the same session row.
NEEDS_CACHE_S = 30


def _needs(user: Any) -> bool:
    if user.is_superuser or user.is_staff:
        return True
    if user.groups.filter(name__in=SECOND_FACTOR_ROLES).exists():
        return True
    return bool(user.has_perm(SIGN_OFF_PERMISSION))


def needs_second_factor(user: Any, *, reuse: bool = False) -> bool:
    """Whether ``user`` must give a code; with ``reuse``, a cached answer up to NEEDS_CACHE_S old may serve."""
    if not getattr(user, "is_authenticated", False) or not is_required():
        return False
    if not reuse:
        return _needs(user)
    key = f"portal.otp.needed.{user.pk}.{user.date_joined.timestamp()}"  # a reused pk is another key
    cached = cache.get(key)
    if cached is None:
        cached = _needs(user)
        cache.set(key, cached, NEEDS_CACHE_S)
    return bool(cached)


def confirmed_device(user: Any) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=user, confirmed=True).order_by("pk").first()


def enrolment_device(user: Any) -> TOTPDevice:
    """The user's unconfirmed device (made once, so reloading the page keeps the same secret)."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("pk").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=False)
    return device


def secret_base32(device: TOTPDevice) -> str:
    """The secret as authenticator apps take it when typed in (base32, no padding)."""
    return b32encode(device.bin_key).decode().rstrip("=")


def check_code(
    device: TOTPDevice, code: str, *, request: HttpRequest | None, stage: str, actor: Any = None
) -> CodeResult:
    """Verify ``code`` on ``device`` with django-otp's throttling; audit every outcome.

    After n wrong codes in a row, codes are refused without being checked for 2**(n-1) seconds
    (OTP_TOTP_THROTTLE_FACTOR); a code is accepted once only (django-otp keeps the last time step).
    ``stage``: "enrolment", "login" or "api_token", kept in the audit row.
    """
    user = actor or device.user
    allowed, info = device.verify_is_allowed()
    if not allowed:
        until = info.get("locked_until") if info else None
        log_event(
            "user.otp_throttled",
            actor=user,
            obj=user,
            request=request,
            data={"stage": stage, "locked_until": until.isoformat() if until else ""},
        )
        return CodeResult.THROTTLED
    if device.verify_token((code or "").strip()):
        log_event(
            "user.otp_enrolled" if stage == "enrolment" else "user.otp_verified",
            actor=user,
            obj=user,
            request=request,
            data={"stage": stage, "device": device.pk},
        )
        return CodeResult.OK
    log_event("user.otp_failed", actor=user, obj=user, request=request, data={"stage": stage})
    return CodeResult.WRONG
