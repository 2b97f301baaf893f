"""Open Inference Protocol (v2) through the real TorchServe: POST /v2/models/{model}/infer."""

from __future__ import annotations

import json

import pytest
import requests

from core.registry import served_model_names
from core.v2 import image_request
from serving.torchserve import ServerInfo
from tests.handlers.inputs import smear_bytes

pytestmark = pytest.mark.integration


def _infer(info: ServerInfo, model: str, body: dict) -> requests.Response:
    return requests.post(
        f"{info.inference_url}/v2/models/{model}/infer",
        data=json.dumps(body),
        headers={**info.auth(), "Content-Type": "application/json"},
        timeout=120,
    )


@pytest.mark.parametrize("model", served_model_names())
def test_v2_answer_carries_the_same_result_as_predictions(torchserve: ServerInfo, model: str) -> None:
    raw = smear_bytes("Pro")
    r = _infer(torchserve, model, image_request(raw, request_id="req-7"))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model_name"] == model and answer["id"] == "req-7"
    outputs = {o["name"]: o for o in answer["outputs"]}
    result = json.loads(outputs["result"]["data"][0])
    plain = requests.post(
        f"{torchserve.inference_url}/predictions/{model}",
        data=raw,
        headers={**torchserve.auth(), "Content-Type": "application/octet-stream"},
        timeout=120,
    ).json()
    if "probabilities" in plain:
        assert outputs["probabilities"]["data"] == pytest.approx(list(plain["probabilities"].values()), abs=1e-6)
        assert result["label"] == plain["label"]
    else:
        assert result["cells"] == plain["cells"] and outputs["counts"]["data"] == list(plain["counts"].values())


def test_v2_parameters_ask_the_cell_model_for_its_annotated_image(torchserve: ServerInfo) -> None:
    r = _infer(torchserve, "wbc_cells", image_request(smear_bytes("Pre"), {"annotate": True}, "req-7"))
    result = json.loads({o["name"]: o for o in r.json()["outputs"]}["result"]["data"][0])
    assert result["annotated_png"]


def test_bad_v2_requests_get_a_v2_error_with_the_contract_code(torchserve: ServerInfo) -> None:
    bad = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [0.5]}]}
    r = _infer(torchserve, "mobilenetv3_lstm", bad)
    assert r.status_code == 400
    assert r.json()["code"] == "bad_request" and "BYTES" in r.json()["error"]
    r = _infer(torchserve, "mobilenetv3_lstm", image_request(b"%PDF-1.4 not an image", request_id="req-7"))
    assert r.status_code == 415 and r.json()["code"] == "not_an_image"
