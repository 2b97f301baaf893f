"""schemathesis hooks for tests/portal/test_api_contract.py (loaded by the CLI via SCHEMATHESIS_HOOKS).

An upload's ``images`` are files (``format: binary``); a JSON schema cannot say "a picture the decoder
reads, each side at least 64 px" (the operation's description does), so schemathesis sends sample files
(a 1 x 1 px PNG, a PDF, random bytes), which the server rightly refuses with 400. This hook tells it what
such a file is: each generated file becomes a real image, in one of the formats an upload may carry
(portal.contract.IMAGE_MEDIA_TYPES), 64 to 96 px a side, of random pixels. Nothing else of the request
is changed, so a request generated to break the schema still breaks it.

(Declaring the media types with ``encoding.contentType`` and registering these images for them would be
the natural way; schemathesis 4.32 then sends an array property as one part without a file name.)
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis.transport.serialization import Binary

from core.decode import MIN_SIDE
from portal.contract import IMAGE_MEDIA_TYPES


def _encode(fmt: str, width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _image(fmt: str) -> st.SearchStrategy[bytes]:
    side = st.integers(MIN_SIDE, MIN_SIDE + 32)
    return st.builds(lambda w, h, seed: _encode(fmt, w, h, seed), side, side, st.integers(0, 2**16))


#: a real image in one of the formats an upload may carry
IMAGES = st.one_of(*(_image(media_type.split("/", 1)[1].upper()) for media_type in IMAGE_MEDIA_TYPES))


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    """The files of an upload become real images; everything else is left as generated (a body that breaks
    the schema in another way still does)."""
    operation = context.operation
    if operation is None or (operation.method.upper(), operation.path) != ("POST", "/api/analyses/"):
        return st.just(body)
    images = body.get("images") if isinstance(body, dict) else None
    if not isinstance(images, list) or not images or not all(isinstance(i, bytes | Binary) for i in images):
        return st.just(body)
    return st.lists(IMAGES, min_size=len(images), max_size=len(images)).map(
        lambda new: {**body, "images": [Binary(b) for b in new]}
    )
