"""Forward-pass runtimes for the frame classifiers: PyTorch eager, ONNX Runtime and OpenVINO.

The eager model (:func:`served_model.network.load_model` on the archive's weights) is always loaded: it is
the reference, the fallback and what Grad-CAM explanations run on. For a faster runtime, its forward
pass (logits and the pooled features the smear gate reads) is exported to ONNX *from those loaded
weights, at worker start*, into memory (``torch.onnx.export``, TorchScript exporter: about 1 s per
model), and loaded by ONNX Runtime or compiled by OpenVINO from the same bytes. Exporting at start
rather than packing a graph into the .mar keeps each archive at its fp16 weights (an fp32 .onnx
would add 15-88 MB per archive) and the graph can never be stale against the weights beside it.

Before a runtime serves, :func:`select_forward` checks its calibrated probabilities against eager on
a fixed probe batch (:data:`PARITY_TOLERANCE`); a runtime that is missing, fails to export/load or
misses parity is logged and replaced by eager, and the reason is kept in
:attr:`Selection.fallback_reason` (answers carry the runtime that produced them in ``runtime``).

Which runtime serves which model (:data:`SERVED_RUNTIME`, from :mod:`core.manifest`) was chosen by measurement
(``python -m bench.runtimes``, docs/results/benchmarks.md); ``LEUKEMIA_RUNTIME`` (``eager``,
``onnxruntime``, ``openvino``) overrides it for every model of a worker.

OpenVINO is compiled with ``INFERENCE_PRECISION_HINT f32``: on CPUs with bf16 units (this one has
avx512_bf16) its default would be bf16, whose results differ from eager by more than float rounding.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core import manifest

__all__ = [
    "RUNTIMES",
    "SERVED_RUNTIME",
    "RUNTIME_DISTRIBUTIONS",
    "PARITY_TOLERANCE",
    "RUNTIME_ENV",
    "Forward",
    "Selection",
    "export_onnx",
    "eager_forward",
    "onnxruntime_forward",
    "openvino_forward",
    "build_forward",
    "probability_gap",
    "probe_batch",
    "requested_runtime",
    "select_forward",
]

log = logging.getLogger(__name__)

RUNTIMES: tuple[str, ...] = ("eager", "onnxruntime", "openvino")
#: The runtime each frame model serves with (bench.runtimes measured it; docs/results/benchmarks.md): the manifest's.
SERVED_RUNTIME: dict[str, str] = {e.name: e.runtime for e in manifest.entries("frame")}
#: The distributions each runtime imports (their own requirements come with them): an archive's
#: requirements.txt pins these, at the serving image's versions (release.archive.runtime_requirements).
RUNTIME_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "eager": (),
    "onnxruntime": ("onnx", "onnxruntime"),  # onnx: torch.onnx.export at worker start
    "openvino": ("onnx", "openvino"),
}
#: Largest |p_runtime - p_eager| over classes and probe images that a runtime may show and still serve.
PARITY_TOLERANCE = 1e-3
RUNTIME_ENV = "LEUKEMIA_RUNTIME"
_OPSET = 17


@dataclass
class Forward:
    """A forward pass: (B, 3, S, S) float32 tensor -> (logits (B, K), pooled features (B, D))."""

    name: str
    run: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.run(batch)


class _LogitsAndPooled(torch.nn.Module):
    """The served forward of a HybridClassifier as one graph: ``(logits, pooled)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m: Any = self.model
        feats = m.forward_features(x)
        return m.forward_head(feats), m.forward_head(feats, pre_logits=True)


def eager_forward(model: torch.nn.Module) -> Forward:
    """PyTorch eager under ``torch.inference_mode()`` (the reference)."""
    graph = _LogitsAndPooled(model).eval()

    def run(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            logits, pooled = graph(batch)
        return logits, pooled

    return Forward("eager", run)


def export_onnx(model: torch.nn.Module, input_size: int) -> bytes:
    """The model's ``(logits, pooled)`` forward as ONNX bytes, batch dimension dynamic."""
    import io

    graph = _LogitsAndPooled(model).eval()
    example = torch.zeros(2, 3, input_size, input_size)
    buf = io.BytesIO()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # the fused transformer-layer kernel (taken without gradients) has no ONNX form: trace the plain ops
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _export(graph, example, buf)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return buf.getvalue()


def _export(graph: torch.nn.Module, example: torch.Tensor, buf: Any) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated in favour of the dynamo one, which takes 10x longer
        # (about 11 s for the smallest model on this CPU): too slow for a worker's start
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (example,),
            buf,
            dynamo=False,
            input_names=["x"],
            output_names=["logits", "pooled"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}, "pooled": {0: "batch"}},
            opset_version=_OPSET,
        )


def _as_tensors(logits: np.ndarray, pooled: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(logits)), torch.from_numpy(np.ascontiguousarray(pooled))


def onnxruntime_forward(onnx: bytes, threads: int) -> Forward:
    """ONNX Runtime's CPU execution provider, all graph optimisations, ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])

    def run(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, pooled = session.run(["logits", "pooled"], {"x": batch.detach().contiguous().numpy()})
        return _as_tensors(logits, pooled)

    return Forward("onnxruntime", run, {"version": ort.__version__, "threads": opts.intra_op_num_threads})


def openvino_forward(onnx: bytes, threads: int, precision: str = "f32") -> Forward:
    """OpenVINO's CPU plugin compiled from the ONNX bytes: latency hint, one stream, ``threads`` threads,
    no core pinning (several workers share the cores), inference precision ``precision``."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(onnx),
        "CPU",
        {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": max(1, int(threads)),
            "INFERENCE_PRECISION_HINT": precision,
            "ENABLE_CPU_PINNING": False,
        },
    )
    request = compiled.create_infer_request()
    out_logits, out_pooled = compiled.output("logits"), compiled.output("pooled")

    def run(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = request.infer({0: batch.detach().contiguous().numpy()})
        # the request reuses its output buffers: copy before the next call
        return _as_tensors(np.array(result[out_logits]), np.array(result[out_pooled]))

    name = "openvino" if precision == "f32" else f"openvino-{precision}"
    return Forward(name, run, {"version": ov.__version__, "threads": int(threads), "precision": precision})


def build_forward(runtime: str, model: torch.nn.Module, input_size: int, threads: int) -> Forward:
    """``runtime`` (one of :data:`RUNTIMES`, or ``openvino-bf16``) for ``model``; raises if it cannot be built."""
    if runtime == "eager":
        return eager_forward(model)
    t0 = time.perf_counter()
    onnx = export_onnx(model, input_size)
    export_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    if runtime == "onnxruntime":
        fwd = onnxruntime_forward(onnx, threads)
    elif runtime == "openvino":
        fwd = openvino_forward(onnx, threads)
    elif runtime == "openvino-bf16":
        fwd = openvino_forward(onnx, threads, precision="bf16")
    else:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    fwd.info.update(export_s=round(export_s, 3), load_s=round(time.perf_counter() - t1, 3), onnx_bytes=len(onnx))
    return fwd


def probe_batch(input_size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    """A fixed batch of normalised-scale noise for the start-up parity check."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, input_size, input_size, generator=gen)


def probability_gap(a: torch.Tensor, b: torch.Tensor, temperature: float = 1.0) -> float:
    """max |softmax(a / T) - softmax(b / T)| over a batch of logits."""
    pa = torch.softmax(a.float() / temperature, dim=-1)
    pb = torch.softmax(b.float() / temperature, dim=-1)
    return float((pa - pb).abs().max())


@dataclass
class Selection:
    """The forward a worker serves with, and how it was chosen."""

    forward: Forward
    requested: str
    parity_gap: float | None = None
    fallback_reason: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": self.forward.name,
            "requested": self.requested,
            "parity_max_abs_dp": self.parity_gap,
            "fallback_reason": self.fallback_reason,
            **self.forward.info,
        }


def requested_runtime(model_name: str) -> str:
    """``LEUKEMIA_RUNTIME`` if set, else :data:`SERVED_RUNTIME` (eager for a model not listed)."""
    return os.environ.get(RUNTIME_ENV, "").strip() or SERVED_RUNTIME.get(model_name, "eager")


def select_forward(
    model: torch.nn.Module,
    model_name: str,
    input_size: int,
    threads: int,
    temperature: float = 1.0,
    requested: str | None = None,
) -> Selection:
    """The requested runtime if it builds and keeps parity with eager on :func:`probe_batch`, else eager."""
    requested = requested or requested_runtime(model_name)
    eager = eager_forward(model)
    if requested == "eager":
        return Selection(eager, requested)
    try:
        fwd = build_forward(requested, model, input_size, threads)
        probe = probe_batch(input_size)
        gap = probability_gap(fwd(probe)[0], eager(probe)[0], temperature)
        if not gap <= PARITY_TOLERANCE:
            raise RuntimeError(f"probabilities differ from eager by {gap:.2e} > {PARITY_TOLERANCE:g}")
    except Exception as exc:  # noqa: BLE001 - any failure of the optional runtime falls back to eager
        reason = f"{type(exc).__name__}: {exc}"
        log.exception("%s: runtime %s unavailable (%s); serving with PyTorch eager", model_name, requested, reason)
        return Selection(eager, requested, fallback_reason=reason)
    log.info("%s: serving with %s (probe parity %.1e, %s)", model_name, fwd.name, gap, fwd.info)
    return Selection(fwd, requested, parity_gap=gap)
