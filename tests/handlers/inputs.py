"""Request payloads for the decode, handler and integration tests: good variants and bad inputs.

Each :class:`Case` is sent the same way in-process (as the TorchServe request row) and over HTTP.
``expected`` is the contract's error code, or ``None`` for an accepted (200) input. Cases whose
refusal depends on the smear gate have ``needs_gate``.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import DATA_ALL4

__all__ = ["Case", "smear_path", "smear_bytes", "good_cases", "bad_cases", "natural_photo_bytes", "png_header"]


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    content_type: str = "application/octet-stream"
    expected: str | None = None  # error code; None = accepted
    needs_gate: bool = False

    def row(self) -> dict[str, object]:
        """The request row TorchServe hands the handler for this body and content type."""
        if self.content_type == "application/json":
            try:
                return {"body": json.loads(self.body.decode("utf-8"))}
            except (UnicodeDecodeError, json.JSONDecodeError):
                return {"body": self.body}
        if self.content_type.startswith("text"):
            try:
                return {"body": self.body.decode("utf-8")}
            except UnicodeDecodeError:
                return {"body": self.body}
        return {"body": self.body}


def count_json_parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The lengths of the JSON texts core.decode parses from now on (the test's monkeypatch undoes it)."""
    import core.decode

    parsed: list[int] = []
    loads = json.loads

    def counting(text: str | bytes, *args: Any, **kwargs: Any) -> Any:
        parsed.append(len(text))
        return loads(text, *args, **kwargs)

    monkeypatch.setattr(core.decode.json, "loads", counting)
    return parsed


def smear_path(cls: str = "Pre", index: int = 0) -> Path:
    return sorted((DATA_ALL4 / "original" / cls).glob("*.jpg"))[index]


def smear_bytes(cls: str = "Pre", index: int = 0) -> bytes:
    return smear_path(cls, index).read_bytes()


def _encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _smear_image(size: tuple[int, int] | None = None) -> Image.Image:
    img = Image.open(smear_path()).convert("RGB")
    return img.resize(size, Image.Resampling.BICUBIC) if size else img


def png_header(width: int, height: int, bit_depth: int = 8, colour: int = 2, idat: bytes = b"") -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (pixel data optional/truncated)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", idat or zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def natural_photo_bytes() -> bytes:
    """A natural photograph (a portrait) shipped with matplotlib; not among the smear gate's negatives,
    which use scikit-learn's sample photos."""
    import matplotlib

    return (Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").read_bytes()


def _text_page() -> bytes:
    img = Image.new("RGB", (850, 1100), "white")
    draw = ImageDraw.Draw(img)
    for i in range(40):
        draw.text(
            (60, 40 + i * 25), f"Line {i:02d}: the quick brown fox jumps over the lazy dog. 0123456789", fill="black"
        )
    return _encode(img, "PNG")


def good_cases() -> list[Case]:
    """Valid variants of a real smear image: all must be accepted."""
    img = _smear_image()
    arr16 = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    big = _smear_image((1024, 768))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: must be turned upright
    b64 = base64.b64encode(smear_bytes()).decode("ascii")
    return [
        Case("jpeg", smear_bytes()),
        Case("png", _encode(img, "PNG"), "image/png"),
        Case("bmp", _encode(img, "BMP")),
        Case("tiff", _encode(img, "TIFF", compression="tiff_lzw")),
        Case("grayscale", _encode(img.convert("L"), "PNG")),
        Case("palette", _encode(img.convert("P"), "PNG")),
        Case("rgba", _encode(img.convert("RGBA"), "PNG")),
        Case("cmyk_jpeg", _encode(img.convert("CMYK"), "JPEG", quality=95)),
        Case("png16", _encode(Image.fromarray(arr16), "PNG")),
        Case("exif_rotated", _encode(big, "JPEG", exif=exif.tobytes())),
        Case("json_base64", json.dumps({"image": b64}).encode(), "application/json"),
        Case("json_data_url", json.dumps({"image": "data:image/jpeg;base64," + b64}).encode(), "application/json"),
    ]


def bad_cases() -> list[Case]:
    """At least 15 refusals, each with its contract code."""
    rng = np.random.default_rng(0)
    jpeg = smear_bytes()
    gif_frames = [Image.new("P", (100, 100), i) for i in range(3)]
    gif = io.BytesIO()
    gif_frames[0].save(gif, format="GIF", save_all=True, append_images=gif_frames[1:], duration=100, loop=0)
    apng = io.BytesIO()
    frames = [_smear_image((128, 128)), _smear_image((128, 128)).rotate(90)]
    frames[0].save(apng, format="PNG", save_all=True, append_images=frames[1:])
    bomb = _encode(Image.new("1", (10_000, 10_000)), "PNG")  # 100 MP, a few kB
    pdf = (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    )
    return [
        Case("empty_body", b"", expected="bad_request"),
        Case("random_bytes", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), expected="not_an_image"),
        Case("truncated_jpeg", jpeg[: len(jpeg) // 2], expected="not_an_image"),
        Case("one_pixel", _encode(Image.new("RGB", (1, 1), "red"), "PNG"), expected="image_too_small"),
        Case("too_narrow", _encode(_smear_image((63, 200)), "PNG"), expected="image_too_small"),
        Case("decompression_bomb", bomb, expected="image_too_large"),
        Case("header_30000x30000", png_header(30_000, 30_000), expected="image_too_large"),
        Case("text_plain", b"hello, this is not an image\n", "text/plain", expected="not_an_image"),
        Case("text_as_octets", b"just some text in an octet stream" * 20, expected="not_an_image"),
        Case("pdf", pdf, "application/pdf", expected="not_an_image"),
        Case("animated_gif", gif.getvalue(), "image/gif", expected="not_an_image"),
        Case("animated_png", apng.getvalue(), "image/png", expected="not_an_image"),
        Case("webp", _encode(_smear_image(), "WEBP"), "image/webp", expected="not_an_image"),
        Case("invalid_base64", b'{"image": "not*base64!!"}', "application/json", expected="bad_request"),
        Case("json_without_image", b'{"picture": "abc"}', "application/json", expected="bad_request"),
        Case("json_image_not_string", b'{"image": 42}', "application/json", expected="bad_request"),
        Case("json_array", b"[1, 2, 3]", "application/json", expected="bad_request"),
        Case("natural_photo", natural_photo_bytes(), "image/jpeg", expected="not_a_blood_smear", needs_gate=True),
        Case("text_page_image", _text_page(), "image/png", expected="not_a_blood_smear", needs_gate=True),
    ]
