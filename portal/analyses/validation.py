"""Validation of uploaded images before anything is stored, by the model server's own decoder.

:func:`core.decode.open_image` is the one definition of an acceptable image (formats, still frames
only, size and pixel limits, decompression bombs, corrupt files): the portal stores exactly what the
models will decode, and refuses with the contract's codes (``not_an_image``, ``image_too_small``,
``image_too_large``; ``empty`` for an empty file) and a message a user can act on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError

from core.decode import ALLOWED_FORMATS as DECODER_FORMATS
from core.decode import open_image
from core.errors import RequestError

__all__ = ["ALLOWED_FORMATS", "ValidatedImage", "megabytes", "over_the_limit_text", "validate_image_bytes"]

# Pillow format -> (content type, file extension), for exactly the formats the decoder accepts.
_TYPES: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "BMP": ("image/bmp", "bmp"),
    "TIFF": ("image/tiff", "tif"),
}
ALLOWED_FORMATS: dict[str, tuple[str, str]] = {fmt: _TYPES[fmt] for fmt in DECODER_FORMATS}
_WHAT = {
    "not_an_image": "not an image the models can read",
    "image_too_small": "too small",
    "image_too_large": "too large",
    "bad_request": "not an image",
}


def megabytes(size: int) -> str:
    """A size in bytes as people read it: "25 MB", "31.2 MB" (MB of 2**20 bytes, as the limits are set)."""
    return f"{size / 2**20:.1f}".removesuffix(".0") + " MB"


def over_the_limit_text(name: str, size: int, limit: int) -> str:
    """Why a file over the size limit is refused, with its size and the limit (in bytes when the two
    would read the same in MB). portal/static/portal/upload.js says the same before the upload."""
    shown, most = megabytes(size), megabytes(limit)
    if shown == most:
        shown, most = f"{size:,} bytes", f"{most} ({limit:,} bytes)"
    return f"{name}: the file is {shown}, over the size limit of {most}."


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
    """Decode ``data`` as the model server will; raise ValidationError (with the contract's code) if refused."""
    label = original_name or "upload"
    if not data:
        raise ValidationError(f"{label}: the file is empty.", code="empty")
    try:
        decoded = open_image(
            data,
            min_side=settings.PORTAL_MIN_IMAGE_SIDE,
            max_pixels=settings.PORTAL_MAX_IMAGE_PIXELS,
            max_bytes=settings.PORTAL_MAX_UPLOAD_BYTES,
        )
    except RequestError as exc:
        raise ValidationError(f"{label}: {_WHAT.get(exc.code, 'refused')}: {exc.message}.", code=exc.code) from None
    content_type, extension = ALLOWED_FORMATS[decoded.format]
    width, height = decoded.original_size
    return ValidatedImage(
        original_name=original_name[:255],
        data=data,
        format=decoded.format,
        content_type=content_type,
        extension=extension,
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
    )
