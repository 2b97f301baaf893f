from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from PIL import Image

from core import decode
from core.decode import (
    MAX_BYTES,
    decode_request,
    extract_payload,
    open_image,
    parse_json_body,
    request_flag,
    request_json,
    to_rgb,
)
from core.errors import ERROR_STATUS, RequestError
from core.v2 import image_request
from tests.handlers.inputs import bad_cases, count_json_parses, good_cases, smear_bytes, smear_path

GOOD = good_cases()
BAD = [c for c in bad_cases() if not c.needs_gate]


@pytest.mark.parametrize("case", GOOD, ids=[c.name for c in GOOD])
def test_good_inputs_decode_to_rgb(case) -> None:
    decoded = decode_request(case.row())
    assert decoded.image.mode == "RGB"
    assert min(decoded.image.size) >= decode.MIN_SIDE


@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
def test_bad_inputs_are_refused_with_their_code(case) -> None:
    with pytest.raises(RequestError) as info:
        decode_request(case.row())
    assert info.value.code == case.expected, info.value.message
    assert 400 <= info.value.status < 500
    body = info.value.to_dict()
    assert body["code"] == case.expected and body["message"]


def test_enough_bad_cases_for_the_acceptance_suite() -> None:
    cases = bad_cases()
    assert len(cases) >= 15 and len({c.name for c in cases}) == len(cases)


def test_same_pixels_from_raw_multipart_and_base64() -> None:
    raw = smear_bytes()
    a = np.asarray(decode_request({"body": raw}).image)
    b = np.asarray(decode_request({"data": bytearray(raw)}).image)
    c = np.asarray(decode_request({"body": {"image": base64.b64encode(raw).decode()}}).image)
    d = np.asarray(Image.open(smear_path()).convert("RGB"))
    assert np.array_equal(a, b) and np.array_equal(a, c) and np.array_equal(a, d)


def test_exif_orientation_is_applied() -> None:
    case = next(c for c in GOOD if c.name == "exif_rotated")
    decoded = decode_request(case.row())
    assert decoded.original_size == (1024, 768)
    assert decoded.image.size == (768, 1024)  # orientation 6: rotated a quarter turn


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    arr = np.linspace(0, 65535, 128 * 128).reshape(128, 128).astype(np.uint16)
    rgb = np.asarray(to_rgb(Image.fromarray(arr)))
    assert rgb.shape == (128, 128, 3)
    assert rgb.min() == 0 and rgb.max() == 255
    assert abs(int(rgb[64, 64, 0]) - round(int(arr[64, 64]) / 257)) <= 1


def test_rgba_is_composited_on_white() -> None:
    img = Image.new("RGBA", (80, 80), (10, 20, 30, 0))
    assert np.asarray(to_rgb(img)).min() == 255


def test_byte_limit() -> None:
    with pytest.raises(RequestError) as info:
        open_image(b"\xff\xd8" + b"\0" * MAX_BYTES)
    assert info.value.code == "image_too_large" and info.value.status == 413


def test_missing_field_names_what_was_sent() -> None:
    with pytest.raises(RequestError) as info:
        extract_payload({"file": b"abc"})
    assert info.value.code == "bad_request" and "file" in info.value.message


def test_pillow_bomb_protection_stays_on() -> None:
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # what TorchServe does with limit_max_image_pixels=false
        decode.enforce_pillow_limits()
        assert Image.MAX_IMAGE_PIXELS == decode.MAX_PIXELS
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_every_status_is_4xx_except_internal() -> None:
    assert all(400 <= s < 500 for c, s in ERROR_STATUS.items() if c != "internal_error")
    with pytest.raises(ValueError):
        RequestError("no_such_code", "x")


def _large_jpeg(size: tuple[int, int] = (2560, 1920), **save: object) -> bytes:
    import io

    buf = io.BytesIO()
    Image.open(smear_path()).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def test_draft_mode_decodes_large_jpegs_at_a_reduced_scale_that_keeps_the_side() -> None:
    raw = _large_jpeg()
    full = decode_request({"body": raw})
    draft = decode_request({"body": raw}, draft_side=299)
    assert full.image.size == (2560, 1920)
    assert draft.image.size == (640, 480)  # 1/4: the smallest DCT scale with both sides >= 299
    assert draft.original_size == full.original_size == (2560, 1920) and draft.format == "JPEG"
    assert draft.image.mode == "RGB"
    # the same picture: the reduced full decode and the draft agree to a few grey levels on average
    reduced = np.asarray(full.image.resize(draft.image.size, Image.Resampling.BOX), dtype=np.float64)
    assert np.abs(reduced - np.asarray(draft.image, dtype=np.float64)).mean() < 3.0


def test_draft_mode_leaves_small_and_non_jpeg_images_alone() -> None:
    raw = smear_bytes()  # 224x224: under 2x any model's side
    a = np.asarray(decode_request({"body": raw}).image)
    b = np.asarray(decode_request({"body": raw}, draft_side=128).image)
    assert np.array_equal(a, b)
    case = next(c for c in GOOD if c.name == "exif_rotated")
    rotated = decode_request(case.row(), draft_side=128)
    assert rotated.original_size == (1024, 768)
    assert rotated.image.size[0] < rotated.image.size[1]  # orientation still applied after the draft
    assert min(rotated.image.size) >= 128


@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
def test_draft_mode_refuses_what_full_decoding_refuses(case) -> None:
    with pytest.raises(RequestError) as info:
        decode_request(case.row(), draft_side=128)
    assert info.value.code == case.expected, info.value.message


@pytest.mark.parametrize("field", ["body", "data"])
@pytest.mark.parametrize("as_text", [False, True])
def test_a_json_body_is_parsed_once_and_then_read_as_an_object(
    field: str, as_text: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = smear_bytes()
    text = json.dumps(image_request(raw, {"explain": True}))
    row = {field: text if as_text else text.encode(), "other": "kept"}
    parsed = count_json_parses(monkeypatch)
    once = parse_json_body(row)
    assert parsed == [len(text)]
    assert once["other"] == "kept" and isinstance(once[field], dict)
    assert extract_payload(once) == raw and request_flag(once, "explain") and request_json(once) == once[field]
    assert parsed == [len(text)]  # nothing parsed again
    assert parse_json_body(once) is once


@pytest.mark.parametrize(
    "row",
    [
        {"body": smear_bytes()},
        smear_bytes(),
        {"body": b"{not json"},
        {"body": "text"},
        {"x": 1},
        {"body": {"image": "a"}},
    ],
    ids=["image_bytes", "bare_bytes", "bad_json", "text", "no_payload", "parsed"],
)
def test_a_row_that_is_not_json_text_is_left_as_it_is(row) -> None:
    assert parse_json_body(row) is row


def test_a_bare_json_row_is_wrapped_as_a_body() -> None:
    raw = smear_bytes()
    once = parse_json_body(json.dumps({"image": base64.b64encode(raw).decode()}).encode())
    assert set(once) == {"body"} and extract_payload(once) == raw
