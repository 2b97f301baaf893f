"""Login required everywhere (Django's LoginRequiredMiddleware), except the API, where DRF's
authentication (session or token) and permission classes answer 401/403 instead of redirecting;
and, for the roles that need it, a second factor before anything else (SecondFactorRequiredMiddleware)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.middleware import LoginRequiredMiddleware as _Base
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.deprecation import MiddlewareMixin

from portal.accounts import second_factor
from portal.actions import log_event

__all__ = ["OTP_EXEMPT_VIEWS", "LoginRequiredMiddleware", "SecondFactorRequiredMiddleware"]

API_PREFIX = "/api/"
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
        if view_name in OTP_EXEMPT_VIEWS or not second_factor.needs_second_factor(user, request.session):
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
