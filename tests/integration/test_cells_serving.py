"""End-to-end: the cell-level model wbc_cells in the session's real TorchServe (tests/conftest.py)."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from core.cell_answer import ANSWER_KEYS
from core.errors import ERROR_STATUS
from serving.torchserve import ServerInfo
from tests.handlers.inputs import Case, bad_cases, smear_bytes
from training.cell_data import bccd_split

pytestmark = pytest.mark.integration

MODEL = "wbc_cells"


def _post(
    info: ServerInfo, body: bytes, content_type: str = "image/jpeg", endpoint: str = "predictions", **headers: str
) -> requests.Response:
    return requests.post(
        f"{info.inference_url}/{endpoint}/{MODEL}",
        data=body,
        headers={**info.auth(), "Content-Type": content_type, **headers},
        timeout=120,
    )


def test_served_and_answers_the_contract(torchserve: ServerInfo) -> None:
    _, val = bccd_split()
    r = _post(torchserve, val[0].image.read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == ANSWER_KEYS and body["model"] == MODEL
    assert any(c["kind"] == "wbc" for c in body["cells"])


def test_the_annotated_image_is_asked_by_header_or_explanations(torchserve: ServerInfo) -> None:
    raw = smear_bytes("Early")
    plain = _post(torchserve, raw).json()
    assert "annotated_png" not in plain
    for answer in (_post(torchserve, raw, annotate="1").json(), _post(torchserve, raw, endpoint="explanations").json()):
        png = Image.open(io.BytesIO(base64.b64decode(answer["annotated_png"])))
        assert png.size == Image.open(io.BytesIO(raw)).size
        assert answer["cells"] == plain["cells"]  # the same analysis, only drawn


@pytest.mark.parametrize(
    "case",
    [c for c in bad_cases() if c.name in {"empty_body", "pdf", "one_pixel", "natural_photo", "decompression_bomb"}],
    ids=lambda c: c.name,
)
def test_bad_inputs_get_the_same_codes_as_the_frame_models(torchserve: ServerInfo, case: Case) -> None:
    r = _post(torchserve, case.body, case.content_type)
    assert r.status_code == ERROR_STATUS[case.expected], r.text
    assert r.json()["code"] == case.expected


def test_concurrent_frames_all_answer(torchserve: ServerInfo) -> None:
    _, val = bccd_split()
    bodies = [f.image.read_bytes() for f in val[:6]]
    with ThreadPoolExecutor(6) as pool:
        codes = [r.status_code for r in pool.map(lambda b: _post(torchserve, b), bodies)]
    assert codes == [200] * 6
