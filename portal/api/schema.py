"""The API's OpenAPI contract: every answer an operation can give is in the schema, with its body.

drf-spectacular documents the success answer of each operation from its serializer; this module adds,
to every operation, the error answers the framework gives it, with their bodies:

- **400** ``ValidationError``: ``{"<field>": ["<message>", ...], ...}`` (``non_field_errors`` for the
  request as a whole; a nested object for an item of a list), or ``{"detail": ..., "code": ...}`` when
  the request was refused before validation (too many files, a malformed body). Operations with a
  request body, and lists (their ``page`` parameter);
- **401** ``Error`` (no or a wrong token), **403** ``Error`` (the role lacks the permission): every
  operation that needs a login;
- **404** ``Error``: operations on ``{id}`` (no such record), lists (a page past the last), and writes
  naming a record in their body that does not exist (``code`` ``not_found``);
- **409** ``Error``: writes that would give a record a unique key (MRN, accession number) another has;
- **415** ``Error``: operations with a request body sent in a media type they do not read;
- **503** ``Error``: the database is unreachable (``database_unavailable``, with ``Retry-After``).

``Error`` is ``{"detail": "<message for people>", "code": "<stable code for programs>"}``:
portal.api.exceptions gives every non-validation error its code, portal.errors the ones Django answers.

**How an endpoint declares its answers.** A new view gets the answers above without writing anything.
It declares only its success answer (``@extend_schema(responses={200: MySerializer})``) and any other
answer it gives itself, with :data:`ERROR` as the body: ``@extend_schema(responses={201: X, 409:
ERROR})`` (a conflict of state, as a second sign-off), ``429: ERROR`` and so on. Rules a request must
follow belong in its serializer's fields (``max_length``, choices, ``min_length``, ``allow_blank``,
``allow_empty``, ``RegexValidator``) or, for a model field's own validator function, in the schema
fragment it carries (:func:`portal.contract.schema_rule`), so that the schema says what the server refuses. Query
parameters are declared with ``OpenApiParameter`` and checked by :func:`portal.api.views.query_int`.
Request serializers derive from :class:`portal.api.serializers.StrictFields`: unknown fields are
refused, and the schema says ``additionalProperties: false``.
tests/portal/test_api_contract.py runs schemathesis (every check, the stateful phase included) against
the running API and fails on any answer the schema does not describe.
"""

from __future__ import annotations

import copy
from typing import Any

from django.core.validators import ProhibitNullCharactersValidator
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

from portal.contract import SCHEMA_ATTRIBUTE, schema_rule

__all__ = ["ERROR", "ErrorSerializer", "PortalAutoSchema", "schema_rule"]


#: what DRF's ProhibitNullCharactersValidator lets through (every CharField has one)
NO_NUL_PATTERN = "^[^\\u0000]*$"


def _add_pattern(schema: dict[str, Any], pattern: str) -> None:
    """Adds ``pattern`` to what the field's value must match (in ``allOf`` when it has one already)."""
    if "pattern" not in schema and "allOf" not in schema:
        schema["pattern"] = pattern
        return
    all_of: list[dict[str, Any]] = schema.setdefault("allOf", [])
    if "pattern" in schema:
        all_of.append({"pattern": schema.pop("pattern")})
    all_of.append({"pattern": pattern})


class ErrorSerializer(serializers.Serializer):
    """Every refusal other than a validation error: a message for people and a stable code for programs."""

    detail = serializers.CharField(help_text="what went wrong, in words")
    code = serializers.CharField(
        help_text="a stable code: not_authenticated, authentication_failed, permission_denied, not_found, "
        "method_not_allowed, unsupported_media_type, conflict, immutable, throttled, database_unavailable, ..."
    )


#: the body of an error answer, for ``@extend_schema(responses={409: ERROR})``
ERROR = ErrorSerializer

_VALIDATION_ERROR = {
    "type": "object",
    "description": "Field name -> its messages (non_field_errors: the request as a whole; an object for the "
    "items of a list). A request refused before validation answers detail and code instead.",
    "additionalProperties": {
        "oneOf": [
            {"type": "array", "items": {"type": "string"}},
            {"type": "object"},
            {"type": "string"},
        ]
    },
}

_DESCRIPTIONS = {
    "400": "Invalid request: what is wrong, per field",
    "401": "Not logged in: no token, or a wrong one",
    "403": "Your role may not do this",
    "404": "No such record (or page)",
    "409": "Conflicts with what exists (a unique key taken, a record that may no longer change)",
    "415": "The request body's media type is not one this operation reads",
    "503": "The database is not reachable right now; nothing was saved. Retry after Retry-After seconds",
}


class PortalAutoSchema(AutoSchema):
    """drf-spectacular's schema, plus every error answer (module docstring) and the validators' rules."""

    def _map_serializer_field(self, field: Any, direction: Any, bypass_extensions: bool = False) -> Any:
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if direction == "request" and isinstance(schema, dict):
            for validator in getattr(field, "validators", ()):
                fragment = getattr(validator, SCHEMA_ATTRIBUTE, None)
                if fragment is not None:
                    schema.update(copy.deepcopy(fragment() if callable(fragment) else fragment))
            if any(isinstance(v, ProhibitNullCharactersValidator) for v in getattr(field, "validators", ())):
                _add_pattern(schema, NO_NUL_PATTERN)  # DRF refuses NUL in every text field
        return schema

    def _map_basic_serializer(self, serializer: Any, direction: Any) -> Any:
        schema = super()._map_basic_serializer(serializer, direction)
        from portal.api.serializers import StrictFields

        if direction == "request" and isinstance(serializer, StrictFields):
            schema["additionalProperties"] = False  # the server refuses unknown fields (400)
        return schema

    def _validation_error_ref(self) -> dict[str, str]:
        component = ResolvedComponent(
            name="ValidationError", type=ResolvedComponent.SCHEMA, object="ValidationError", schema=_VALIDATION_ERROR
        )
        self.registry.register_on_missing(component)
        return component.ref  # type: ignore[no-any-return]

    def _error_codes(self) -> list[str]:
        codes = ["503"]
        has_body = self.method in ("POST", "PUT", "PATCH")
        if has_body or self._is_list_view():
            codes.append("400")
        if self.get_auth() and self.view.get_permissions():
            codes += ["401", "403"]
        if "{" in self.path or self._is_list_view() or has_body:
            codes.append("404")
        if has_body:
            codes.append("409")
        if has_body:
            codes.append("415")
        return codes

    def _get_response_bodies(self, direction: Any = "response") -> Any:
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in self._error_codes():
            if code in responses:
                continue
            body: Any = self._validation_error_ref() if code == "400" else ERROR
            responses[code] = self._get_response_for_code(OpenApiResponse(body, _DESCRIPTIONS[code]), code)
        return responses
