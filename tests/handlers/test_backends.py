"""Forward runtimes (handlers.backends): parity with eager on the trained archives, fallback, the answer's runtime."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from ts.context import Context, RequestProcessor

from core.registry import CLASS_NAMES, model_names
from handlers import backends
from handlers.backends import PARITY_TOLERANCE, SERVED_RUNTIME, select_forward
from handlers.runtime import ModelRuntime
from tests.handlers.inputs import smear_bytes

REPO = Path(__file__).resolve().parents[2]
STORE = REPO / "model_store"


def _unpack(model: str, dest: Path) -> Path:
    mar = STORE / f"{model}.mar"
    if not mar.is_file():
        pytest.skip(f"no trained archive {mar}")
    with zipfile.ZipFile(mar) as z:
        z.extractall(dest, [n for n in z.namelist() if n.startswith("model/") or n == "model_card.json"])
    return dest


def _frames() -> list[bytes]:
    """Real B-ALL frames: two per class."""
    return [smear_bytes(cls, i) for cls in CLASS_NAMES for i in (0, 7)]


def test_every_frame_model_names_a_runtime() -> None:
    assert set(SERVED_RUNTIME) == set(model_names())
    assert set(SERVED_RUNTIME.values()) <= set(backends.RUNTIMES)


@pytest.mark.parametrize("runtime_name", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("model", model_names())
def test_runtime_keeps_parity_with_eager_on_real_frames(
    model: str, runtime_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through ModelRuntime (decode, gate, preprocess, batched forward, calibration): the answers of
    each runtime are within PARITY_TOLERANCE of PyTorch eager's on the same trained weights."""
    model_dir = _unpack(model, tmp_path)
    monkeypatch.setenv(backends.RUNTIME_ENV, runtime_name)
    rt = ModelRuntime(model_dir)
    assert rt.runtime_name == runtime_name, rt.selection.describe()
    assert rt.selection.parity_gap is not None and rt.selection.parity_gap <= PARITY_TOLERANCE
    rows = [{"body": raw} for raw in _frames()]
    served = rt.predict(rows)
    rt.selection = select_forward(rt.model, model, rt.spec.input_size, 1, requested="eager")
    reference = rt.predict(rows)
    gaps = []
    for got, ref in zip(served, reference, strict=True):
        assert isinstance(got, dict) and isinstance(ref, dict), (got, ref)
        assert got["runtime"] == runtime_name and ref["runtime"] == "eager"
        gaps += [abs(got["probabilities"][c] - ref["probabilities"][c]) for c in rt.classes]
        assert got["quality"]["smear_score"] == ref["quality"]["smear_score"]
    assert max(gaps) <= PARITY_TOLERANCE


def test_served_runtime_is_the_listed_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(backends.RUNTIME_ENV, raising=False)
    model = "mobilenetv3_lstm"
    rt = ModelRuntime(_unpack(model, tmp_path))
    assert rt.runtime_name == SERVED_RUNTIME[model]
    (body,) = rt.predict([{"body": smear_bytes("Pre")}])
    assert body["runtime"] == SERVED_RUNTIME[model]
    explained = rt.explain({"body": smear_bytes("Pre")})
    assert explained["runtime"] == "eager"  # Grad-CAM needs gradients: PyTorch
    assert max(abs(explained["probabilities"][c] - body["probabilities"][c]) for c in rt.classes) <= PARITY_TOLERANCE


def test_missing_runtime_falls_back_to_eager(
    mobilenet_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(backends.RUNTIME_ENV, "onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: import raises ImportError
    rt = ModelRuntime(mobilenet_model_dir)
    assert rt.runtime_name == "eager"
    info = rt.selection.describe()
    assert info["requested"] == "onnxruntime" and "ModuleNotFoundError" in info["fallback_reason"]
    assert "serving with PyTorch eager" in caplog.text
    (body,) = rt.predict([{"body": smear_bytes("Early")}])
    assert body["runtime"] == "eager"


def test_unknown_runtime_falls_back_to_eager(mobilenet_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(backends.RUNTIME_ENV, "tensorrt")
    rt = ModelRuntime(mobilenet_model_dir)
    assert rt.runtime_name == "eager"
    assert "unknown runtime" in rt.selection.describe()["fallback_reason"]


def test_runtime_that_misses_parity_does_not_serve(mobilenet_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 OpenVINO differs from eager by more than float rounding: with a zero tolerance it must not serve
    (with the real tolerance, the same check passes the f32 runtimes above)."""
    monkeypatch.setattr(backends, "PARITY_TOLERANCE", 0.0)
    rt = ModelRuntime(mobilenet_model_dir)
    sel = select_forward(rt.model, rt.name, rt.spec.input_size, 1, requested="openvino-bf16")
    assert sel.forward.name == "eager"
    assert "differ from eager" in str(sel.fallback_reason)


def test_probe_parity_is_measured_not_assumed(mobilenet_model_dir: Path) -> None:
    rt = ModelRuntime(mobilenet_model_dir)
    x = backends.probe_batch(rt.spec.input_size)
    eager = backends.eager_forward(rt.model)
    for name in ("onnxruntime", "openvino"):
        fwd = backends.build_forward(name, rt.model, rt.spec.input_size, 1)
        logits, pooled = fwd(x)
        ref_logits, ref_pooled = eager(x)
        assert logits.shape == ref_logits.shape and pooled.shape == ref_pooled.shape
        assert backends.probability_gap(logits, ref_logits) <= PARITY_TOLERANCE
        assert float((pooled - ref_pooled).abs().max()) < 1e-3
        # a different input gives different logits: the graph is not constant
        other = fwd(x.flip(0))[0]
        assert not torch.allclose(other, logits)


def test_handler_describes_its_runtime(mobilenet_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from handlers.leukemia_handler import LeukemiaHandler

    monkeypatch.setenv(backends.RUNTIME_ENV, "openvino")
    handler = LeukemiaHandler()
    ctx = Context("mobilenetv3_lstm", str(mobilenet_model_dir), {}, 1, None, "0.12.0")
    ctx.request_processor = [RequestProcessor({})]
    handler.initialize(ctx)
    ctx.request_processor = [RequestProcessor({"describe": "True"})]
    (out,) = handler.handle([{"body": b""}], ctx)
    info = json.loads(out)
    assert info["runtime"] == "openvino" and info["requested"] == "openvino"
    assert info["parity_max_abs_dp"] <= PARITY_TOLERANCE and info["onnx_bytes"] > 0
