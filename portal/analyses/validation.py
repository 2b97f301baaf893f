"""Validation of uploaded images before anything is stored: real image, allowed format, sane size."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from handlers.decode import ALLOWED_FORMATS as HANDLER_FORMATS

__all__ = ["ALLOWED_FORMATS", "ValidatedImage", "validate_image_bytes"]

# Pillow format -> (content type, file extension), for exactly the formats the handler accepts.
_TYPES: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "BMP": ("image/bmp", "bmp"),
    "TIFF": ("image/tiff", "tif"),
}
ALLOWED_FORMATS: dict[str, tuple[str, str]] = {fmt: _TYPES[fmt] for fmt in HANDLER_FORMATS}


@dataclass(frozen=True)
class ValidatedImage:
    """An upload that passed validation, with what we learnt about it."""

    original_name: str
    data: bytes
    format: str
    content_type: str
    extension: str
    width: int
    height: int
    sha256: str


def validate_image_bytes(original_name: str, data: bytes) -> ValidatedImage:
    """Check that ``data`` is a decodable JPEG/PNG/BMP/TIFF within the size limits; raise ValidationError."""
    label = original_name or "upload"
    if not data:
        raise ValidationError(f"{label}: the file is empty.", code="empty")
    if len(data) > settings.PORTAL_MAX_UPLOAD_BYTES:
        raise ValidationError(
            f"{label}: {len(data) / 1e6:.1f} MB is over the {settings.PORTAL_MAX_UPLOAD_BYTES / 1e6:.0f} MB limit.",
            code="too_large",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                width, height = img.size
                if width * height > settings.PORTAL_MAX_IMAGE_PIXELS:
                    raise ValidationError(f"{label}: {width}x{height} pixels is too large.", code="too_large")
                img.verify()
            with PILImage.open(io.BytesIO(data)) as img:
                img.load()
    except ValidationError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        PILImage.DecompressionBombError,
        PILImage.DecompressionBombWarning,
    ) as exc:
        raise ValidationError(
            f"{label}: not a readable image ({exc.__class__.__name__}).", code="not_an_image"
        ) from exc
    if fmt not in ALLOWED_FORMATS:
        raise ValidationError(
            f"{label}: format {fmt or 'unknown'} is not accepted (JPEG, PNG, BMP, TIFF).", code="format"
        )
    side = settings.PORTAL_MIN_IMAGE_SIDE
    if width < side or height < side:
        raise ValidationError(f"{label}: {width}x{height} is smaller than {side}x{side} pixels.", code="too_small")
    content_type, extension = ALLOWED_FORMATS[fmt]
    return ValidatedImage(
        original_name=original_name[:255],
        data=data,
        format=fmt,
        content_type=content_type,
        extension=extension,
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
    )
