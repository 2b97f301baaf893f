"""DRF's exception handler, plus an audit row for every refused attempt by an authenticated user."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from portal.errors import audit_access_denied

__all__ = ["audited_exception_handler"]


def audited_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = exception_handler(exc, context)
    request = context.get("request")
    if isinstance(exc, exceptions.PermissionDenied) and request is not None:
        audit_access_denied(request, str(exc.detail))
    return response
