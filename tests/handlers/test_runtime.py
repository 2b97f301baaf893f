"""ModelRuntime and the TorchServe handler class, in-process, on a random-init test artifact."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from ts.context import Context, RequestProcessor

from core.errors import RequestError
from core.prediction import FramePrediction
from core.registry import get_spec
from core.v2 import image_request, result_body
from handlers.explain import colorize, grad_cam, overlay_png
from handlers.runtime import ModelRuntime
from served_model.network import load_model
from served_model.transforms import build_eval_transform
from tests.handlers.inputs import bad_cases, count_json_parses, good_cases, smear_bytes, smear_path


@pytest.fixture(scope="module")
def runtime(mobilenet_model_dir: Path) -> ModelRuntime:
    return ModelRuntime(mobilenet_model_dir)


def _reference_probs(model_dir: Path, raw: bytes, temperature: float) -> torch.Tensor:
    """Independent path: load_model + the training transform + softmax(logits / T)."""
    model = load_model(model_dir / "model")
    x = build_eval_transform(get_spec("mobilenetv3_lstm"))(Image.open(io.BytesIO(raw)).convert("RGB"))
    with torch.no_grad():
        return torch.softmax(model(x.unsqueeze(0)) / temperature, dim=-1)[0]


def test_prediction_matches_independent_inference(runtime: ModelRuntime, mobilenet_model_dir: Path) -> None:
    raw = smear_bytes("Benign")
    (body,) = runtime.predict([{"body": raw}])
    assert isinstance(body, dict)
    ref = _reference_probs(mobilenet_model_dir, raw, runtime.temperature)
    got = torch.tensor([body["probabilities"][c] for c in runtime.classes])
    assert float((got - ref).abs().max()) <= 1e-5
    assert body["malignant_probability"] == pytest.approx(1 - body["probabilities"]["Benign"])
    assert set(body["timing_ms"]) >= {"decode", "preprocess", "inference", "gate", "postprocess", "total"}


def test_batch_with_bad_members_keeps_good_ones(runtime: ModelRuntime) -> None:
    bad = [c for c in bad_cases() if not c.needs_gate][:5]
    rows = [{"body": smear_bytes("Pre")}] + [c.row() for c in bad] + [{"body": smear_bytes("Pro")}]
    out = runtime.predict(rows)
    assert isinstance(out[0], dict) and isinstance(out[-1], dict)
    assert out[0]["batch_size"] == 2
    for case, res in zip(bad, out[1:-1], strict=True):
        assert isinstance(res, RequestError) and res.code == case.expected
    # Batched and single answers agree.
    (single,) = runtime.predict([{"body": smear_bytes("Pro")}])
    assert out[-1]["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)


@pytest.mark.parametrize("case", [c for c in bad_cases() if c.needs_gate], ids=lambda c: c.name)
def test_gate_refuses_non_smears(runtime: ModelRuntime, case) -> None:
    (res,) = runtime.predict([case.row()])
    assert isinstance(res, RequestError) and res.code == "not_a_blood_smear"
    assert res.details["score"] < res.details["threshold"]


def test_a_card_without_a_valid_gate_does_not_load(mobilenet_model_dir: Path, tmp_path: Path) -> None:
    """The gate fails closed: no gate (or a broken one) means no model, never "accept everything"."""
    import json
    import shutil

    from core.card import CardError

    for gate, error in (({}, CardError), ({"kind": "other", "threshold": 0.5, "coef": [], "intercept": 0}, ValueError)):
        model_dir = tmp_path / f"m{len(str(gate))}"
        shutil.copytree(mobilenet_model_dir, model_dir)
        card = json.loads((model_dir / "model_card.json").read_text())
        card["smear_gate"] = gate
        (model_dir / "model_card.json").write_text(json.dumps(card))
        with pytest.raises(error):
            ModelRuntime(model_dir)


def test_the_cards_benign_threshold_refers_an_unconfirmed_benign(mobilenet_model_dir: Path, tmp_path: Path) -> None:
    """The runtime answers with the card's Benign operating point; a card without one keeps the confidence rule."""
    import shutil

    logits = torch.tensor([4.0, 0.0, 0.0, 0.0])  # Benign, confidently
    plain = ModelRuntime(mobilenet_model_dir)
    old = plain._body(logits, {}, {}).to_json()
    assert old["label"] == "Benign" and old["benign_threshold"] is None and old["abstain_reason"] is None
    model_dir = tmp_path / "benign"
    shutil.copytree(mobilenet_model_dir, model_dir)
    card = json.loads((model_dir / "model_card.json").read_text())
    (model_dir / "model_card.json").write_text(json.dumps(card | {"benign_threshold": 0.999}))
    body = ModelRuntime(model_dir)._body(logits, {}, {}).to_json()
    assert body["label"] is None and body["abstained"] and body["abstain_reason"] == "benign_not_confirmed"
    assert body["benign_threshold"] == 0.999 and body["probabilities"] == pytest.approx(old["probabilities"])


def test_explanation(runtime: ModelRuntime) -> None:
    body = runtime.explain({"body": smear_bytes("Early")})
    h, w = body["grid_shape"]
    grid = np.array(body["grid"])
    # one cell per CNN output position: the input size over the backbone's total stride
    reduction = runtime.model.backbone.feature_info[-1]["reduction"]
    side = math.ceil(runtime.spec.input_size / reduction)
    assert grid.shape == (h, w) == (side, side) and grid.min() >= 0.0 and grid.max() <= 1.0
    assert body["method"] == "grad-cam" and body["explained_class"] in runtime.classes
    # One call answers the prediction too: the same body as /predictions, label semantics included.
    (pred,) = runtime.predict([{"body": smear_bytes("Early")}])
    assert isinstance(pred, dict)
    for key in ("model", "version", "label", "class_index", "abstained", "quality"):
        assert body[key] == pred[key], key
    for cls in runtime.classes:
        assert body["probabilities"][cls] == pytest.approx(pred["probabilities"][cls], abs=1e-5)
    top = max(pred["probabilities"], key=pred["probabilities"].get)
    assert body["explained_class"] == top and (body["label"] is None) == body["abstained"]
    png = Image.open(io.BytesIO(base64.b64decode(body["overlay_png_base64"])))
    assert png.format == "PNG" and png.size == (224, 224)
    # the typed contract reads both answers back as they were written (core.prediction.FramePrediction)
    for answer in (body, pred):
        text = json.dumps(answer)
        assert json.dumps(FramePrediction.parse(json.loads(text), runtime.classes).to_json()) == text


def test_grad_cam_is_the_gradient_weighted_map(runtime: ModelRuntime) -> None:
    x = runtime.transform(Image.open(smear_path("Pro")).convert("RGB")).unsqueeze(0)
    cam = grad_cam(runtime.model, x, class_index=1)
    assert cam.class_index == 1
    # Recompute by hand with hooks on the full forward pass.
    model = runtime.model
    with torch.enable_grad():
        fmap = model.forward_cnn(x).detach().requires_grad_(True)
        logit = model.forward_head(model.forward_sequence(fmap))[0, 1]
        logit.backward()
    w = fmap.grad.mean(dim=(2, 3), keepdim=True)
    ref = torch.relu((w * fmap).sum(1))[0].detach()
    ref = ref / ref.max() if ref.max() > 0 else ref
    assert np.allclose(cam.grid, ref.numpy(), atol=1e-5)


def test_overlay_and_colormap() -> None:
    img = Image.new("RGB", (1024, 768), "white")
    grid = np.zeros((7, 7))
    grid[3, 3] = 1.0
    png = Image.open(io.BytesIO(overlay_png(img, grid)))
    assert png.size == (512, 384)
    c = colorize(np.array([[0.0, 1.0]]))
    assert c.dtype == np.uint8 and not np.array_equal(c[0, 0], c[0, 1])


def _context(model_dir: Path, headers: list[dict[str, str]]) -> Context:
    ctx = Context("mobilenetv3_lstm", str(model_dir), {}, len(headers), None, "0.12.0")
    ctx.request_processor = [RequestProcessor(h) for h in headers]
    return ctx


def test_handler_sets_per_request_status(mobilenet_model_dir: Path) -> None:
    from handlers.leukemia_handler import LeukemiaHandler

    handler = LeukemiaHandler()
    handler.initialize(_context(mobilenet_model_dir, [{}]))
    rows = [{"body": smear_bytes("Pre")}, {"body": b""}, {"body": b"garbage" * 50}, {"data": smear_bytes("Benign")}]
    headers = [{}, {}, {}, {"explain": "True"}]
    ctx = _context(mobilenet_model_dir, headers)
    out = [json.loads(o) for o in handler.handle(rows, ctx)]
    statuses = [ctx.get_response_status(i)[0] for i in range(4)]
    assert statuses == [200, 400, 415, 200]
    assert out[0]["label"] is None or out[0]["label"] in out[0]["probabilities"]
    assert out[1]["code"] == "bad_request" and out[2]["code"] == "not_an_image"
    assert out[3]["method"] == "grad-cam"


def test_a_v2_request_asks_for_the_heatmap_with_a_parameter(mobilenet_model_dir: Path) -> None:
    """KServe's v2 protocol has no explain verb: ``parameters.explain`` asks for the Grad-CAM heatmap."""
    from handlers.leukemia_handler import LeukemiaHandler

    handler = LeukemiaHandler()
    handler.initialize(_context(mobilenet_model_dir, [{}]))
    raw = smear_bytes("Pre")
    rows = [
        {"body": image_request(raw, {"explain": True})},
        {"body": image_request(raw, {"explain": False})},
        {"body": image_request(raw)},
    ]
    ctx = _context(mobilenet_model_dir, [{}, {}, {}])
    answers = [json.loads(o) for o in handler.handle(rows, ctx)]
    assert [ctx.get_response_status(i)[0] for i in range(3)] == [200, 200, 200]
    results = [json.loads(a["outputs"][0]["data"][0]) for a in answers]
    assert results[0]["method"] == "grad-cam" and base64.b64decode(results[0]["overlay_png_base64"])[:4] == b"\x89PNG"
    assert "overlay_png_base64" not in results[1] and "overlay_png_base64" not in results[2]
    assert results[0]["probabilities"] == pytest.approx(results[1]["probabilities"], abs=1e-4)  # eager vs served


def test_the_handler_parses_each_json_request_once(mobilenet_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The explain flag, the decoder and the answer's v2 form all read one parse of the body (as
    TorchServe passes it: bytes), and each row gets the answer it asked for."""
    from handlers.leukemia_handler import LeukemiaHandler

    handler = LeukemiaHandler()
    handler.initialize(_context(mobilenet_model_dir, [{}]))
    texts = [
        json.dumps(image_request(smear_bytes("Pre"), {"explain": True})),
        json.dumps(image_request(smear_bytes("Pro"))),
    ]
    ctx = _context(mobilenet_model_dir, [{}, {}])
    parsed = count_json_parses(monkeypatch)
    out = handler.handle([{"body": t.encode()} for t in texts], ctx)
    assert sorted(parsed) == sorted(len(t) for t in texts)
    assert [ctx.get_response_status(i)[0] for i in range(2)] == [200, 200]
    results = [result_body(json.loads(o)) for o in out]
    assert results[0]["method"] == "grad-cam" and "method" not in results[1]


def test_handler_module_defines_exactly_one_class() -> None:
    import inspect

    import handlers.leukemia_handler as mod

    classes = [m for _, m in inspect.getmembers(mod, inspect.isclass) if m.__module__ == mod.__name__]
    assert len(classes) == 1
    assert not hasattr(mod, "handle")  # a module-level handle() would shadow the class entry point


def test_good_variants_predict(runtime: ModelRuntime) -> None:
    cases = good_cases()
    out = runtime.predict([c.row() for c in cases])
    assert all(isinstance(o, dict) for o in out), [o.to_dict() for o in out if isinstance(o, RequestError)]


def test_the_gate_thread_computes_the_statistics_and_changes_no_answer(
    mobilenet_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The smear gate's statistics run on the runtime's gate thread, beside the request path, and the
    answers (probabilities, quality, refusals) are the ones the request path alone gives."""
    import threading

    from handlers.runtime import GATE_THREAD_ENV
    from served_model.smear_gate import SmearGate

    monkeypatch.setenv(GATE_THREAD_ENV, "0")
    inline = ModelRuntime(mobilenet_model_dir)
    assert inline.gate_thread is None
    monkeypatch.delenv(GATE_THREAD_ENV)
    threaded = ModelRuntime(mobilenet_model_dir)
    assert threaded.gate_thread is not None

    threads: list[str] = []
    statistics = SmearGate.statistics

    def recording(self: SmearGate, image: Image.Image) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return statistics(self, image)

    monkeypatch.setattr(SmearGate, "statistics", recording)
    rows = [{"body": smear_bytes(c)} for c in ("Benign", "Pro")] + [c.row() for c in bad_cases() if c.needs_gate]
    got, want = threaded.predict(rows), inline.predict(rows)
    assert threads[: len(rows)] == [f"gate-{threaded.name}_0"] * len(rows)
    assert threads[len(rows) :] == [threading.current_thread().name] * len(rows)
    assert sum(isinstance(a, dict) for a in got) == 2 and sum(isinstance(a, RequestError) for a in got) >= 2
    for a, b in zip(got, want, strict=True):
        if isinstance(b, RequestError):
            assert isinstance(a, RequestError) and a.to_dict() == b.to_dict()
            continue
        assert isinstance(a, dict)
        assert a["probabilities"] == b["probabilities"] and a["quality"] == b["quality"]
        timing = a["timing_ms"]
        assert "gate_background" not in b["timing_ms"] and timing["gate_background"] > 0
        path = sum(v for k, v in timing.items() if k not in ("total", "gate_background"))
        assert timing["total"] == pytest.approx(path, abs=0.01)
    explained = threaded.explain(rows[0])
    assert explained["quality"] == want[0]["quality"] and "gate_background" in explained["timing_ms"]
