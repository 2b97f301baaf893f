"""Login required everywhere (Django's LoginRequiredMiddleware), except the API, where DRF's
authentication (session or token) and permission classes answer 401/403 instead of redirecting.

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

from django.conf import settings
from django.contrib.auth.middleware import LoginRequiredMiddleware as _Base
from django.http import HttpRequest, HttpResponseBase

__all__ = ["POLL_HEADER", "LoginRequiredMiddleware", "SessionActivityMiddleware"]

API_PREFIX = "/api/"
#: Sent by the page's own background requests (static/portal/progress.js): not the user's activity.
POLL_HEADER = "X-Portal-Poll"
_RENEWED_AT = "_portal_renewed_at"


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
