"""The project's own KServe predictor (kserve_predictor/: KServe's model server running the frame and cell
runtimes, in KServe's environment, no TorchServe) against TorchServe serving the same archives: the same
answers on real frames, the same refusals (the contract's 4xx and code), readiness, the cards' versions."""

from __future__ import annotations

import ast
import concurrent.futures
import json
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
import requests

from core.errors import ERROR_STATUS
from core.registry import CLASS_NAMES
from core.v2 import error_code, image_request, result_body
from serving.torchserve import ServerInfo, free_ports
from tests.conftest import KSERVE_MODELS, REPO
from tests.handlers.inputs import bad_cases, natural_photo_bytes, smear_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FRAME_MODEL, CELL_MODEL = KSERVE_MODELS
#: real frames: two of each class
FRAMES = [(cls, i) for cls in CLASS_NAMES for i in range(2)]
#: what may differ between two servers answering the same request: the time each step took
VARYING = {"timing_ms"}


def _post(url: str, model: str, request: dict[str, Any]) -> requests.Response:
    return requests.post(f"{url}/v2/models/{model}/infer", json=request, timeout=120)


def _both(ts: ServerInfo, predictor: str, model: str, request: dict[str, Any]) -> tuple[Any, Any]:
    """The same v2 request to TorchServe's own v2 endpoint and to the predictor: (TorchServe's, predictor's)."""
    return _post(ts.inference_url, model, request), _post(predictor, model, request)


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal JSON, numbers within 1e-6 (the probabilities: calibrated softmax of the same forward pass)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) - VARYING == set(b) - VARYING, where
        for k in set(a) - VARYING:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        assert b == pytest.approx(a, abs=1e-6), where
    else:
        assert a == b, where


def _parsed(answer: dict[str, Any]) -> dict[str, Any]:
    """A v2 answer with its ``result`` output's JSON string parsed, so that the comparison sees its fields,
    and without the ``parameters`` that KServe's response model writes out as null where there are none."""
    for part in [answer, *answer["outputs"]]:
        if "parameters" in part and part["parameters"] is None:
            del part["parameters"]
    for output in answer["outputs"]:
        if output["name"] == "result":
            output["data"] = [json.loads(output["data"][0])]
    return answer


def _answers(ts: ServerInfo, predictor: str, model: str, raw: bytes, **parameters: Any) -> tuple[dict, dict]:
    r_ts, r_kp = _both(ts, predictor, model, image_request(raw, parameters or None, "same-1"))
    assert r_ts.status_code == 200, r_ts.text
    assert r_kp.status_code == 200, r_kp.text
    return _parsed(r_ts.json()), _parsed(r_kp.json())


def test_ready_once_every_model_is_loaded_with_its_cards_version(kserve_predictor: str, model_store: Path) -> None:
    assert requests.get(f"{kserve_predictor}/v2/health/ready", timeout=5).json() == {"ready": True}
    for model in KSERVE_MODELS:
        ready = requests.get(f"{kserve_predictor}/v2/models/{model}/ready", timeout=5)
        assert ready.status_code == 200 and ready.json()["ready"] is True, model
        with zipfile.ZipFile(model_store / f"{model}.mar") as z:
            version = json.loads(z.read("model_card.json"))["version"]
        answer = _post(kserve_predictor, model, image_request(smear_bytes("Pre"))).json()
        assert answer["model_version"] == version == (result_body(answer) or {}).get("version"), model
    assert requests.get(f"{kserve_predictor}/v2/models/xception_bigru/ready", timeout=5).status_code == 404


def test_frame_answers_equal_torchserves_on_real_frames(kserve_torchserve: ServerInfo, kserve_predictor: str) -> None:
    for cls, i in FRAMES:
        ts, kp = _answers(kserve_torchserve, kserve_predictor, FRAME_MODEL, smear_bytes(cls, i))
        assert kp["id"] == ts["id"] == "same-1"
        _assert_same(ts, kp, f"{cls}/{i}")  # the body's fields, the v2 tensors (probabilities within 1e-6, label)
        assert kp["outputs"][0]["data"][0]["runtime"] == "onnxruntime"  # the served runtime, as in TorchServe


def test_explanations_equal_torchserves(kserve_torchserve: ServerInfo, kserve_predictor: str) -> None:
    ts, kp = _answers(kserve_torchserve, kserve_predictor, FRAME_MODEL, smear_bytes("Early", 1), explain=True)
    body = kp["outputs"][0]["data"][0]
    assert body["method"] == "grad-cam" and body["overlay_png_base64"]
    _assert_same(ts, kp)  # the grid within 1e-6, the same overlay PNG


def test_cell_answers_equal_torchserves(kserve_torchserve: ServerInfo, kserve_predictor: str) -> None:
    for cls in ("Pre", "Benign"):
        ts, kp = _answers(kserve_torchserve, kserve_predictor, CELL_MODEL, smear_bytes(cls), annotate=True)
        body = kp["outputs"][0]["data"][0]
        assert body["cells"] and body["annotated_png"]
        _assert_same(ts, kp, cls)


def test_concurrent_requests_are_batched_and_answered_alike(kserve_predictor: str) -> None:
    raws = [smear_bytes(cls, i) for cls, i in FRAMES]
    alone = [result_body(_post(kserve_predictor, FRAME_MODEL, image_request(raw)).json()) for raw in raws]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda raw: _post(kserve_predictor, FRAME_MODEL, image_request(raw)), raws * 2))
    assert all(r.status_code == 200 for r in together)
    bodies = [result_body(r.json()) for r in together]
    assert max(b["batch_size"] for b in bodies) > 1  # type: ignore[index]
    for one, batched in zip(alone * 2, bodies, strict=True):
        assert batched["probabilities"] == pytest.approx(one["probabilities"], abs=1e-5)  # type: ignore[index]


_IMAGE_REFUSALS = [c for c in bad_cases() if c.content_type not in ("application/json", "text/plain") and c.body]


@pytest.mark.parametrize("case", _IMAGE_REFUSALS, ids=lambda c: c.name)
def test_refusals_equal_torchserves_with_the_contract_status(
    kserve_torchserve: ServerInfo, kserve_predictor: str, case: Any
) -> None:
    r_ts, r_kp = _both(kserve_torchserve, kserve_predictor, FRAME_MODEL, image_request(case.body))
    assert r_kp.status_code == ERROR_STATUS[case.expected] == r_ts.status_code, r_kp.text
    body = r_kp.json()
    assert body["code"] == case.expected == error_code(r_ts.json())
    assert body["error"] == r_ts.json()["error"] and body["error"] == f"{body['code']}: {body['message']}"


def test_malformed_v2_requests_and_the_cell_models_refusal(
    kserve_torchserve: ServerInfo, kserve_predictor: str
) -> None:
    no_image = {"inputs": [{"name": "other", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    r_ts, r_kp = _both(kserve_torchserve, kserve_predictor, FRAME_MODEL, no_image)
    assert r_kp.status_code == r_ts.status_code == 400
    assert r_kp.json()["code"] == error_code(r_ts.json()) == "bad_request"
    assert r_kp.json()["message"] == r_ts.json()["error"].removeprefix("bad_request: ")
    # not a v2 request at all (KServe's request model refuses it before the runtime): still the contract's 400
    r = _post(kserve_predictor, FRAME_MODEL, {"inputs": [{"name": "image", "datatype": "BYTES"}]})
    assert r.status_code == 400 and r.json()["code"] == "bad_request" and "shape" in r.json()["message"]
    r_ts, r_kp = _both(kserve_torchserve, kserve_predictor, CELL_MODEL, image_request(natural_photo_bytes()))
    assert r_kp.status_code == r_ts.status_code == 422
    assert r_kp.json()["code"] == error_code(r_ts.json()) == "not_a_blood_smear"
    assert r_kp.json()["score"] < r_kp.json()["threshold"]  # the gate's details, as in the contract's body


def test_a_body_over_torchserves_request_limit_is_refused_unread(kserve_predictor: str) -> None:
    from serving.torchserve import DEFAULT_CONFIG, parse_properties

    limit = int(dict(parse_properties(DEFAULT_CONFIG.read_text()))["max_request_size"])
    r = requests.post(
        f"{kserve_predictor}/v2/models/{FRAME_MODEL}/infer",
        data=b"{" + b" " * limit + b"}",
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    assert r.status_code == 413 and r.json()["code"] == "image_too_large", r.text[:300]


def test_v1_predict_and_explain_answer_the_contracts_body(kserve_predictor: str) -> None:
    import base64

    image = {"image": base64.b64encode(smear_bytes("Pro")).decode("ascii")}
    predicted = requests.post(f"{kserve_predictor}/v1/models/{FRAME_MODEL}:predict", json=image, timeout=120)
    explained = requests.post(f"{kserve_predictor}/v1/models/{FRAME_MODEL}:explain", json=image, timeout=120)
    assert predicted.status_code == explained.status_code == 200
    assert predicted.json()["probabilities"] == pytest.approx(explained.json()["probabilities"], abs=1e-4)
    assert "overlay_png_base64" in explained.json() and "overlay_png_base64" not in predicted.json()
    cells = requests.post(f"{kserve_predictor}/v1/models/{CELL_MODEL}:explain", json=image, timeout=120)
    assert cells.status_code == 200 and cells.json()["annotated_png"]


def test_the_predictor_needs_no_torchserve() -> None:
    from bench.kserve_server import KSERVE_PYTHON

    probe = "import importlib.util as u; print(u.find_spec('ts'), u.find_spec('torch') is not None)"
    out = subprocess.run([str(KSERVE_PYTHON), "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["None", "True"]  # KServe's environment has torch and no TorchServe
    for path in (REPO / "kserve_predictor").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] == "ts"], path


def test_an_archive_without_its_card_stops_the_predictor(tmp_path: Path) -> None:
    from bench.kserve_server import start_predictor

    store = tmp_path / "store"
    store.mkdir()
    with zipfile.ZipFile(store / f"{FRAME_MODEL}.mar", "w") as z:
        z.writestr("model/model_config.json", "{}")
    with pytest.raises(RuntimeError, match="no model/ or model_card.json in the archive"):
        start_predictor(store, [FRAME_MODEL], free_ports()["inference"], tmp_path / "log", timeout_s=120)
