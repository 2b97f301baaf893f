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
from core.registry import CLASS_NAMES
from evaluation.cell_served import frame_blast
from serving.torchserve import ServerInfo
from tests.handlers.inputs import Case, bad_cases, smear_bytes
from training.cell_data import bccd_split
from training.data import load_split

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


def test_blasts_on_malignant_frames_and_a_lower_share_on_benign_ones(torchserve: ServerInfo) -> None:
    """The served wbc_cells finds blasts on B-ALL validation frames (blocks never trained on), fewer on Benign ones.

    The first three validation frames of each class, as uploaded (224x224, squashed: widened by the model).
    """
    val = load_split().val
    found: dict[str, list[dict]] = {}
    for name in CLASS_NAMES:
        found[name] = []
        for sample in [s for s in val if s.class_name == name][:3]:
            r = _post(torchserve, sample.path.read_bytes())
            assert r.status_code == 200, r.text
            body = r.json()
            assert "blast" in body["counts"]
            for cell in body["cells"]:
                x0, y0, x1, y1 = cell["box"]
                assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224  # in the upload's pixels
                assert set(cell["probabilities"]) >= {"blast", "lymphocyte"}
            found[name].append(frame_blast(body["cells"]))
    malignant = [f for name in CLASS_NAMES if name != "Benign" for f in found[name]]
    assert sum(f["blast"] for f in malignant) >= 3
    mean_share = lambda fs: sum(f["share"] for f in fs) / len(fs)  # noqa: E731
    assert mean_share(malignant) > mean_share(found["Benign"]) + 0.2, (mean_share(malignant), found["Benign"])
