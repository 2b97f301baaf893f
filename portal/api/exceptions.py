"""DRF's exception handler, plus an audit row for every refused attempt by an authenticated user."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

__all__ = ["audited_exception_handler"]


def audited_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = exception_handler(exc, context)
    request = context.get("request")
    if isinstance(exc, exceptions.PermissionDenied) and request is not None and request.user.is_authenticated:
        from portal.actions import log_event

        log_event(
            "access.denied",
            actor=request.user,
            request=request,
            object_type="url",
            object_id=request.path[:64],
            data={"method": request.method, "path": request.path[:300], "reason": str(exc.detail)[:300]},
        )
    return response
