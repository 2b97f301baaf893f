"""DRF's exception handler, with the answers the API contract documents (portal.api.schema):

- every refusal other than a validation error answers ``{"detail": ..., "code": ...}`` (DRF gives
  ``detail`` alone; the code is the exception's own: ``not_found``, ``permission_denied`` ...);
- a validation error whose only complaint is that a record named in the body does not exist
  (``does_not_exist``: an upload for specimen 7 that is not there) answers **404** ``not_found``, and
  one whose only complaint is a unique key already taken (an MRN, an accession number) answers **409**
  ``conflict``: the request was well formed, a schema cannot say which records exist;
- an audit row for every refused attempt by an authenticated user.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from portal.errors import audit_access_denied, error_body

__all__ = ["audited_exception_handler"]

#: a validation error made only of these codes is answered with this status instead of 400
_NOT_A_BAD_REQUEST = {
    "does_not_exist": (status.HTTP_404_NOT_FOUND, "not_found"),
    "unique": (status.HTTP_409_CONFLICT, "conflict"),
}


def _leaves(codes: Any) -> list[str]:
    if isinstance(codes, dict):
        return [c for v in codes.values() for c in _leaves(v)]
    if isinstance(codes, list):
        return [c for v in codes for c in _leaves(v)]
    return [str(codes)]


def _messages(detail: Any, prefix: str = "") -> list[str]:
    if isinstance(detail, dict):
        return [m for k, v in detail.items() for m in _messages(v, f"{k}: " if k != "non_field_errors" else "")]
    if isinstance(detail, list):
        return [m for v in detail for m in _messages(v, prefix)]
    return [f"{prefix}{detail}"]


def audited_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, Http404):  # as DRF's handler does, but here, so that the code is added below
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    if isinstance(exc, exceptions.ValidationError):
        codes = set(_leaves(exc.get_codes()))
        if len(codes) == 1 and (mapped := _NOT_A_BAD_REQUEST.get(codes.pop())) is not None:
            http_status, code = mapped
            return Response(error_body(" ".join(_messages(exc.detail)), code), status=http_status)
    response = exception_handler(exc, context)
    request = context.get("request")
    if isinstance(exc, exceptions.PermissionDenied) and request is not None:
        audit_access_denied(request, str(exc.detail))
    if (
        response is not None
        and isinstance(exc, exceptions.APIException)
        and not isinstance(exc, exceptions.ValidationError)
        and isinstance(response.data, dict)
        and "code" not in response.data
    ):
        own = exc.get_codes()
        response.data["code"] = own if isinstance(own, str) else exc.default_code
    return response
