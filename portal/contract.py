"""Validators that say, in JSON-schema keywords, what they refuse (read by portal.api.schema).

Kept free of Django, Django REST framework and drf-spectacular so that model modules, and the
schemathesis hooks of tests/portal/test_api_contract.py, can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from core.decode import ALLOWED_FORMATS

__all__ = ["IMAGE_MEDIA_TYPES", "SCHEMA_ATTRIBUTE", "schema_rule"]

#: the media types of the image formats an upload may carry (core.decode.ALLOWED_FORMATS)
IMAGE_MEDIA_TYPES = tuple(f"image/{fmt.lower()}" for fmt in ALLOWED_FORMATS)

F = TypeVar("F", bound=Callable[..., Any])
SCHEMA_ATTRIBUTE = "openapi_schema"


def schema_rule(fragment: dict[str, Any] | Callable[[], dict[str, Any]]) -> Callable[[F], F]:
    """Marks a field validator with the JSON-schema keywords that say the same (``pattern``,
    ``minLength`` ...; a callable for a rule that depends on settings or on the day, as "not in the
    future"). portal.api.schema.PortalAutoSchema adds them to every request field the validator checks."""

    def mark(validator: F) -> F:
        setattr(validator, SCHEMA_ATTRIBUTE, fragment)
        return validator

    return mark
