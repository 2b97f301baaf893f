"""Login required everywhere (Django's LoginRequiredMiddleware), except the API, where DRF's
authentication (session or token) and permission classes answer 401/403 instead of redirecting;
and, for the roles that need it, a second factor before anything else (SecondFactorRequiredMiddleware).

The idle timeout (settings.SESSION_COOKIE_AGE) counts from the user's last action: a request renews the
session, but at most once every PORTAL_SESSION_RENEW_S seconds, and never a request the page's own
polling makes (``X-Portal-Poll``): a results page left open must not keep a session alive, and a page
that loads an image and four heatmaps at once must not write the session row five times (Django's
SESSION_SAVE_EVERY_REQUEST would, and concurrent writes of one row fail on SQLite).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.middleware import LoginRequiredMiddleware as _Base
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.deprecation import MiddlewareMixin

from portal.accounts import second_factor
from portal.actions.events import log_event

__all__ = [
    "OTP_EXEMPT_VIEWS",
    "POLL_HEADER",
    "LoginRequiredMiddleware",
    "SecondFactorRequiredMiddleware",
    "SessionActivityMiddleware",
]

API_PREFIX = "/api/"
#: Sent by the page's own background requests (static/portal/progress.js): not the user's activity.
POLL_HEADER = "X-Portal-Poll"
_RENEWED_AT = "_portal_renewed_at"
# What a signed-in user who still owes a code may reach: the code pages themselves, logging out,
# the token endpoint (it asks for its own code), health checks and the favicon.
OTP_EXEMPT_VIEWS = frozenset(
    {"accounts:otp_setup", "accounts:otp_verify", "accounts:logout", "api:token", "healthz", "readyz", "favicon"}
)
API_PAGES_FOR_PEOPLE = frozenset({"api:docs"})  # redirected like any page, not answered with JSON


class LoginRequiredMiddleware(_Base):
    def process_view(
        self, request: HttpRequest, view_func: Callable[..., Any], view_args: Any, view_kwargs: Any
    ) -> HttpResponseBase | None:
        if request.path_info.startswith(API_PREFIX):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)


class SessionActivityMiddleware:
    """Renew a logged-in session on the user's own requests, at most once per PORTAL_SESSION_RENEW_S."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        session = getattr(request, "session", None)
        user = getattr(request, "user", None)
        if session is None or user is None or not user.is_authenticated or request.headers.get(POLL_HEADER):
            return response
        now = int(time.time())
        if now - int(session.get(_RENEWED_AT, 0)) >= settings.PORTAL_SESSION_RENEW_S:
            session[_RENEWED_AT] = now  # modified: SessionMiddleware saves it with a fresh expiry
        return response


class SecondFactorRequiredMiddleware(MiddlewareMixin):
    """A reviewer, admin or superuser signed in with the password only is sent to the code page
    (or, with no authenticator app enrolled yet, to the enrolment page) until a code is given.

    Runs after django-otp's OTPMiddleware (``request.user.is_verified``). API requests with an
    ``Authorization`` header are DRF's (token authentication; the token was issued against a code);
    an API request on an unverified session is refused with 403 ``otp_required``.
    """

    def process_view(
        self, request: HttpRequest, view_func: Callable[..., Any], view_args: Any, view_kwargs: Any
    ) -> HttpResponseBase | None:
        user = request.user
        if not user.is_authenticated or user.is_verified():  # type: ignore[union-attr,attr-defined]
            return None
        match = request.resolver_match
        view_name = match.view_name if match else ""
        if view_name in OTP_EXEMPT_VIEWS or not second_factor.needs_second_factor(user, reuse=True):
            return None
        if request.path_info.startswith(API_PREFIX) and view_name not in API_PAGES_FOR_PEOPLE:
            if "HTTP_AUTHORIZATION" in request.META:
                return None
            log_event("user.otp_required", actor=user, obj=user, request=request, data={"path": request.path[:200]})
            return JsonResponse(
                {
                    "detail": "Give your second-factor code first (log in on the web page, or use a token).",
                    "code": "otp_required",
                },
                status=403,
            )
        target = "accounts:otp_verify" if second_factor.confirmed_device(user) else "accounts:otp_setup"
        return redirect(f"{reverse(target)}?{urlencode({'next': request.get_full_path()})}")
