"""Turn one TorchServe request row into a validated RGB :class:`PIL.Image.Image`.

Accepted (docs/guides/serving.md): the image bytes as the raw body, as the multipart field ``data``,
or base64 in JSON ``{"image": "<base64>"}`` (a ``data:image/...;base64,`` prefix is allowed), or an
Open Inference Protocol (v2) request whose BYTES input holds the base64 image (:mod:`core.v2`).
Formats: JPEG, PNG, BMP, TIFF, still images only. EXIF orientation is applied; grayscale, palette,
RGBA/LA (composited on white), CMYK, YCbCr and 16-bit inputs are converted to 8-bit RGB.

Limits: at least :data:`MIN_SIDE` px a side, at most :data:`MAX_PIXELS` pixels and
:data:`MAX_BYTES` bytes. Pillow's decompression-bomb protection stays on: the pixel count is
checked from the header before any pixel is decoded, and Pillow's own bomb warning is an error.
Every refusal is a :class:`~core.errors.RequestError` with the contract's code.

Large JPEGs can be decoded in draft mode (``draft_side``): libjpeg scales the DCT by 1/2, 1/4 or 1/8
while decoding, to the smallest scale whose both sides still hold ``draft_side`` pixels, so a
2560x1920 frame for a 299 px model decodes as 640x480 at a fraction of the cost. The limits are
checked on the header's size first, as without it; ``original_size`` stays the header's.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from dataclasses import dataclass
from struct import error as struct_error
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import RequestError
from core.v2 import v2_image, v2_parameters, v2_request

__all__ = [
    "ALLOWED_FORMATS",
    "MIN_SIDE",
    "MAX_PIXELS",
    "MAX_BYTES",
    "DecodedImage",
    "enforce_pillow_limits",
    "extract_payload",
    "request_json",
    "parse_json_body",
    "request_flag",
    "open_image",
    "to_rgb",
    "decode_request",
]

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "TIFF")
MIN_SIDE = 64
MAX_PIXELS = 50_000_000
MAX_BYTES = 25 * 1024 * 1024  # raw image bytes (base64 in JSON may be 4/3 of this)
_PAYLOAD_FIELDS = ("data", "body")


@dataclass(frozen=True)
class DecodedImage:
    """A decoded, validated RGB image and what it was before conversion."""

    image: Image.Image
    format: str
    original_mode: str
    original_size: tuple[int, int]
    n_bytes: int


def enforce_pillow_limits(max_pixels: int = MAX_PIXELS) -> None:
    """Keep Pillow's decompression-bomb check on, at no more than ``max_pixels``.

    TorchServe turns it off (``Image.MAX_IMAGE_PIXELS = None``) when ``limit_max_image_pixels`` is
    false; the handler calls this at start so the protection is on whatever the configuration.
    """
    if Image.MAX_IMAGE_PIXELS is None or max_pixels < Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _from_json(obj: Any) -> bytes:
    if not isinstance(obj, dict):
        raise RequestError("bad_request", 'JSON body must be an object {"image": "<base64>"}')
    request = v2_request(obj)
    value = v2_image(request) if request is not None else obj.get("image")
    if value is None:
        raise RequestError("bad_request", 'JSON body has no "image" field (expected {"image": "<base64>"})')
    if not isinstance(value, str):
        raise RequestError("bad_request", 'JSON field "image" must be a base64 string')
    if value.startswith("data:"):
        head, _, value = value.partition(",")
        if ";base64" not in head:
            raise RequestError("bad_request", "data URL must be base64-encoded")
    compact = "".join(value.split())
    if len(compact) > (MAX_BYTES * 4) // 3 + 4:
        raise RequestError("image_too_large", f"image is larger than {MAX_BYTES} bytes")
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("bad_request", 'JSON field "image" is not valid base64') from None
    if not raw:
        raise RequestError("bad_request", 'JSON field "image" is empty')
    return raw


def _payload_field(row: Any) -> str | None:
    """The field of a TorchServe row dict that holds the payload (None: not a dict, or none present)."""
    if not isinstance(row, dict):
        return None
    return next((k for k in _PAYLOAD_FIELDS if row.get(k) is not None), None)


def request_json(row: Any) -> Any:
    """The request's JSON body (an object or a list) when it sent JSON, else None (never raises)."""
    value = row
    if isinstance(row, dict):
        field = _payload_field(row)
        value = None if field is None else row[field]
    if isinstance(value, dict | list):
        return value
    if isinstance(value, bytes | bytearray):
        if value[:1] != b"{":
            return None
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return None
    return None


def parse_json_body(row: Any) -> Any:
    """``row`` with its JSON body, where it sent one, parsed once: the flags (:func:`request_flag`), the
    decoder (:func:`extract_payload`) and the answer's form (v2 or not) then read the object instead of
    each parsing the text again (about 6 ms per parse for a 5 MB image in JSON). A row of image bytes,
    or one already parsed, is returned as it is."""
    field = _payload_field(row)
    if isinstance(row, dict) and (field is None or isinstance(row[field], dict | list)):
        return row
    body = request_json(row)
    if body is None:
        return row
    return {**row, field: body} if field is not None else {"body": body}


_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def request_flag(row: Any, name: str, *headers: str | None) -> bool:
    """Whether a request asks for ``name`` (``annotate``, ``explain``): a true value in one of ``headers``
    (the values of its request headers), ``"<name>": true`` in its JSON body, or in the ``parameters`` of
    a v2 request. TorchServe does not hand the query string to the handler, so ``?<name>=1`` cannot count."""
    body = request_json(row)
    values: list[Any] = list(headers)
    if isinstance(body, dict):
        values += [body.get(name), v2_parameters(body).get(name)]
    return any(str(v).strip().lower() in _TRUE_WORDS for v in values if v is not None)


def extract_payload(row: Any) -> bytes:
    """The image bytes of one request row (TorchServe passes a dict per request)."""
    value: Any = row
    if isinstance(row, dict):
        field = _payload_field(row)
        if field is None:
            fields = sorted(str(k) for k in row)
            raise RequestError(
                "bad_request",
                f"no image found: send it as the body or as the multipart field 'data' (got fields {fields})",
            )
        value = row[field]
    if isinstance(value, dict | list):
        return _from_json(value)
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("{"):
            try:
                return _from_json(json.loads(stripped))
            except json.JSONDecodeError:
                pass
        if not stripped:
            raise RequestError("bad_request", "empty request body")
        raise RequestError("not_an_image", "the body is text, not an image (send JPEG, PNG, BMP or TIFF bytes)")
    if not isinstance(value, bytes | bytearray):
        raise RequestError("bad_request", f"unsupported request payload type {type(value).__name__}")
    raw = bytes(value)
    if not raw:
        raise RequestError("bad_request", "empty request body")
    if raw[:1] == b"{":
        try:
            return _from_json(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
    return raw


def to_rgb(image: Image.Image) -> Image.Image:
    """Any still-image mode -> 8-bit RGB (16-bit scaled, alpha composited on white)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(image).astype(np.float64)
        scale = 257.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 1.0
        arr8 = np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "F":
        raise RequestError("not_an_image", "floating-point images are not supported; send 8- or 16-bit images")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(
    raw: bytes,
    *,
    min_side: int = MIN_SIDE,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
    draft_side: int | None = None,
) -> DecodedImage:
    """Decode and validate image bytes; raise :class:`RequestError` for anything unacceptable.

    The limits default to the contract's; the portal passes its own settings (never looser than
    these in production) so that it stores only what the models accept, by the same rules.
    ``draft_side``: a JPEG at least twice that on both sides is decoded at a reduced DCT scale that
    keeps both sides >= ``draft_side`` (see the module docstring); other formats are unaffected.
    """
    if len(raw) > max_bytes:
        raise RequestError("image_too_large", f"image is {len(raw)} bytes; the limit is {max_bytes}")
    enforce_pillow_limits()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image: Image.Image = Image.open(io.BytesIO(raw), formats=list(ALLOWED_FORMATS))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise RequestError("image_too_large", f"image has too many pixels ({exc})") from None
        except UnidentifiedImageError:
            raise RequestError(
                "not_an_image", f"not a supported image; send one of {', '.join(ALLOWED_FORMATS)}"
            ) from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise RequestError("not_an_image", f"cannot read the image header: {exc}") from None
        fmt = str(image.format)
        width, height = image.size
        if width * height > max_pixels:
            raise RequestError(
                "image_too_large", f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
            )
        if min(width, height) < min_side:
            raise RequestError(
                "image_too_small", f"image is {width}x{height}; each side must be at least {min_side} px"
            )
        if getattr(image, "n_frames", 1) > 1:
            raise RequestError("not_an_image", "animated or multi-page images are not supported; send one frame")
        original_mode = image.mode
        if draft_side is not None and fmt == "JPEG" and min(width, height) >= 2 * draft_side:
            image.draft(None, (draft_side, draft_side))  # mode unchanged: to_rgb converts as always
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = to_rgb(image)
        except RequestError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise RequestError("image_too_large", f"image has too many pixels ({exc})") from None
        except (OSError, ValueError, SyntaxError, struct_error, MemoryError) as exc:
            raise RequestError("not_an_image", f"the image is corrupt or truncated ({exc})") from None
    if min(rgb.size) < min_side:  # EXIF rotation does not change sides, but stay safe
        raise RequestError("image_too_small", f"image is {rgb.size[0]}x{rgb.size[1]}")
    return DecodedImage(rgb, fmt, original_mode, (width, height), len(raw))


def decode_request(row: Any, draft_side: int | None = None) -> DecodedImage:
    """One TorchServe request row -> validated RGB image (see module docstring)."""
    return open_image(extract_payload(row), draft_side=draft_side)
