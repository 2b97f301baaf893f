"""The models behind KServe's model server (Open Inference Protocol v2), as a KServe predictor serves
them: KServe validates every answer against the protocol and passes a refusal on as its own HTTP 500."""

from __future__ import annotations

import base64
import json

import pytest
import requests

from core.v2 import error_code, image_request
from tests.conftest import KSERVE_MODELS
from tests.handlers.inputs import natural_photo_bytes, smear_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _infer(url: str, model: str, raw: bytes, **parameters: object) -> requests.Response:
    body = image_request(raw, parameters, "k1")
    return requests.post(f"{url}/v2/models/{model}/infer", json=body, timeout=120)


@pytest.mark.parametrize("model", KSERVE_MODELS)
def test_kserve_passes_on_every_models_v2_answer(kserve: str, model: str) -> None:
    r = _infer(kserve, model, smear_bytes("Pro"))
    assert r.status_code == 200, r.text  # KServe refused the shipped answers' list-valued parameters (500)
    answer = r.json()
    assert answer["model_name"] == model and answer["id"] == "k1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    result = json.loads(outputs["result"]["data"][0])
    assert result["model"] == model
    if "probabilities" in result:
        assert outputs["probabilities"]["parameters"]["classes"].split(",") == list(result["probabilities"])
        assert outputs["probabilities"]["data"] == pytest.approx(list(result["probabilities"].values()), abs=1e-6)
    else:
        assert outputs["counts"]["data"] == list(result["counts"].values())


def test_the_heatmap_and_the_annotated_image_are_asked_by_parameters(kserve: str) -> None:
    frame = json.loads(
        _infer(kserve, "mobilenetv3_lstm", smear_bytes("Pre"), explain=True).json()["outputs"][0]["data"][0]
    )
    assert frame["method"] == "grad-cam" and base64.b64decode(frame["overlay_png_base64"])[:4] == b"\x89PNG"
    cells = json.loads(_infer(kserve, "wbc_cells", smear_bytes("Pre"), annotate=True).json()["outputs"][0]["data"][0])
    assert base64.b64decode(cells["annotated_png"])[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("raw", "code"), [(natural_photo_bytes(), "not_a_blood_smear"), (b"%PDF-1.4 not an image", "not_an_image")]
)
def test_a_refusal_keeps_its_code_through_kserve(kserve: str, raw: bytes, code: str) -> None:
    r = _infer(kserve, "mobilenetv3_lstm", raw)
    assert r.status_code == 500  # KServe's: the handler's 4xx is in the text
    assert error_code(r.json()) == code, r.text
