"""Login required everywhere (Django's LoginRequiredMiddleware), except the API, where DRF's
authentication (session or token) and permission classes answer 401/403 instead of redirecting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.middleware import LoginRequiredMiddleware as _Base
from django.http import HttpRequest, HttpResponseBase

__all__ = ["LoginRequiredMiddleware"]

API_PREFIX = "/api/"


class LoginRequiredMiddleware(_Base):
    def process_view(
        self, request: HttpRequest, view_func: Callable[..., Any], view_args: Any, view_kwargs: Any
    ) -> HttpResponseBase | None:
        if request.path_info.startswith(API_PREFIX):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)
