"""One loaded model and everything it needs to answer requests, independent of TorchServe.

:class:`ModelRuntime` reads a model directory as unpacked from a .mar (``model/`` with the weights
and config written by :func:`served_model.network.save_model`, ``model_card.json``), builds the model
with :func:`served_model.network.load_model`, the preprocessing with
:func:`served_model.transforms.build_eval_transform` (the definition training uses too, never
re-typed) and the smear gate from the card. :meth:`ModelRuntime.predict` answers a batch of
request rows with one result per row: a prediction body or a :class:`RequestError`, so one bad
image never fails its batch-mates. :meth:`ModelRuntime.explain` answers an explanation request.

The forward pass of :meth:`ModelRuntime.predict` runs on the runtime :func:`handlers.backends.select_forward`
chose (ONNX Runtime or OpenVINO built from the same weights at load, PyTorch eager as the fallback);
each answer names it in ``runtime``. Explanations (Grad-CAM needs gradients) always run eager.

The smear gate's image statistics do not depend on the model, so each runtime computes them on a
thread of its own (the *gate thread*) from the moment an image is decoded, while the image is
preprocessed and the forward pass runs (the runtimes and NumPy release the GIL); the answer then
waits only for what is left. The CPU work is the same; one answer's wall time loses most of the
gate's (docs/results/benchmarks.md). ``LEUKEMIA_GATE_THREAD=0`` computes them on the request path instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.card import check_card_matches, read_card
from core.decode import DecodedImage, decode_request, enforce_pillow_limits
from core.errors import RequestError
from core.ood import OODScorer
from core.prediction import Explanation, FramePrediction
from handlers.backends import Selection, select_forward
from handlers.explain import OVERLAY_MAX_SIDE, grad_cam, overlay_png_base64
from handlers.postprocess import calibrated_probabilities
from served_model.gate_statistics import STATISTICS_SIDE
from served_model.network import load_model
from served_model.smear_gate import SmearGate
from served_model.transforms import build_eval_transform, data_config

__all__ = [
    "DRAFT_MARGIN",
    "GATE_THREAD_ENV",
    "MODEL_SUBDIR",
    "Prepared",
    "ModelRuntime",
    "configure_threads",
    "elapsed_ms",
    "prepare_worker",
]

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"
#: large JPEGs are decoded at a DCT scale that keeps this many times the side the model and gate need
DRAFT_MARGIN = 2
#: ``0``: compute the smear gate's image statistics on the request path rather than on the gate thread
GATE_THREAD_ENV = "LEUKEMIA_GATE_THREAD"
#: the GIL switch interval (s) of a process with a gate thread (Python's default: 5 ms). The request path
#: returns from GIL-free work (the forward pass, a resize) wanting the GIL back while the gate thread runs
#: Python; with the default it can wait up to 5 ms each time. 0.5 ms answered the most images/s of the
#: intervals tried: docs/results/deployment_ab.md#the-gil-switch-interval-of-a-process-with-a-gate-thread.
GATE_SWITCH_INTERVAL_S = 0.0005


def configure_threads(threads: int) -> None:
    """Set torch's intra-op threads (and one inter-op thread, if still possible)."""
    torch.set_num_threads(max(1, int(threads)))
    # Only settable before the first parallel work; harmless if too late.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def prepare_worker() -> int:
    """Per-worker set-up both handlers do first: torch threads (``LEUKEMIA_TORCH_THREADS``, else 1, so
    that workers do not oversubscribe the CPU) and Pillow's decompression-bomb limit; returns the threads."""
    threads = int(os.environ.get("LEUKEMIA_TORCH_THREADS", "1"))
    configure_threads(threads)
    enforce_pillow_limits()
    return threads


def elapsed_ms(start: float) -> float:
    """Milliseconds since ``start`` (a ``time.perf_counter()`` reading)."""
    return (time.perf_counter() - start) * 1000.0


@dataclass
class Prepared:
    """One request after decoding and preprocessing."""

    decoded: DecodedImage
    tensor: torch.Tensor
    timing_ms: dict[str, float] = field(default_factory=dict)
    #: the gate thread's job for this image: its statistics and the ms they took (None: no gate thread)
    statistics: Future[tuple[np.ndarray, float]] | None = None
    #: the image's gate statistics once :meth:`ModelRuntime._gate` has them (the out-of-distribution score reads them)
    gate_statistics: np.ndarray | None = None


class ModelRuntime:
    """A model, its card, its preprocessing and its smear gate."""

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        # fails closed: a card without a valid smear gate does not load (CardError / ValueError)
        self.card: dict[str, Any] = read_card(model_dir)
        self.model = load_model(model_dir / MODEL_SUBDIR).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.spec = self.model.spec
        self._check_card_matches_spec()
        self.name: str = self.card["name"]
        self.version: str = self.card["version"]
        self.classes: list[str] = list(self.card["classes"])
        self.temperature = float(self.card["temperature"])
        self.abstain_threshold = float(self.card["abstain_threshold"])
        self.transform = build_eval_transform(self.spec)
        self.gate = SmearGate.from_dict(self.card["smear_gate"])
        #: the out-of-distribution score on the model's pooled features (core.ood); None: a card without one
        self.ood: OODScorer | None = OODScorer.from_dict(self.card["ood"]) if self.card.get("ood") else None
        self.gate_thread: ThreadPoolExecutor | None = None
        self.use_gate_thread(os.environ.get(GATE_THREAD_ENV, "1") != "0")
        # the eager model stays loaded: reference for the parity check, fallback, and Grad-CAM
        self.selection: Selection = select_forward(
            self.model, self.name, self.spec.input_size, torch.get_num_threads(), self.temperature
        )

    def _check_card_matches_spec(self) -> None:
        cfg = data_config(self.spec)
        check_card_matches(
            self.card,
            name=self.spec.name,
            classes=self.spec.classes,
            input_size=self.spec.input_size,
            mean=cfg["mean"],
            std=cfg["std"],
        )

    def use_gate_thread(self, enabled: bool) -> None:
        """Compute the gate's image statistics on the gate thread (``enabled``) or on the request path."""
        if enabled and self.gate_thread is None:
            self.gate_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gate-{self.name}")
            sys.setswitchinterval(min(sys.getswitchinterval(), GATE_SWITCH_INTERVAL_S))
        elif not enabled and self.gate_thread is not None:
            self.gate_thread.shutdown(wait=True)
            self.gate_thread = None

    def _timed_statistics(self, decoded: DecodedImage) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        return self.gate.statistics(decoded.image), elapsed_ms(t0)

    # -- steps -----------------------------------------------------------------------------
    def draft_side(self, explain: bool = False) -> int:
        """The smallest side a large JPEG is decoded at: twice what the model input and the smear gate
        need (and at least the overlay's side, for an explanation), so that the antialiased resize still
        does the last reduction. Measured on 16 real frames enlarged to 2560x1920 (mobilenetv3_lstm): with
        the DCT scaling alone doing it (margin 1) the probabilities moved by up to 0.054 from a full
        decode's, with margin 2 by up to 0.012; decode, gate and resize took 8, 12 and 64 ms (full)."""
        side = DRAFT_MARGIN * max(self.spec.input_size, STATISTICS_SIDE)
        return max(side, OVERLAY_MAX_SIDE) if explain else side

    def prepare(self, row: Any, explain: bool = False) -> Prepared:
        """Decode (large JPEGs in draft mode, :meth:`draft_side`), validate and preprocess one request
        row (raises RequestError); the gate thread starts on the image's statistics in between."""
        t0 = time.perf_counter()
        decoded = decode_request(row, draft_side=self.draft_side(explain))
        statistics = None if self.gate_thread is None else self.gate_thread.submit(self._timed_statistics, decoded)
        t1 = time.perf_counter()
        tensor = self.transform(decoded.image)
        timing = {"decode": (t1 - t0) * 1000.0, "preprocess": elapsed_ms(t1)}
        return Prepared(decoded, tensor, timing, statistics)

    @property
    def runtime_name(self) -> str:
        """The runtime :meth:`forward` runs on (``eager``, ``onnxruntime``, ``openvino``)."""
        return self.selection.forward.name

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and pooled features of a batch, on the selected runtime."""
        return self.selection.forward(batch)

    def gate_check(
        self, decoded: DecodedImage, pooled: torch.Tensor | None, statistics: np.ndarray | None = None
    ) -> dict[str, Any]:
        """Quality block of the response; raises ``not_a_blood_smear`` when the gate refuses.
        ``statistics``: the image's gate statistics where already computed (the gate thread's)."""
        return self.gate.check(decoded.image, pooled, statistics)

    def _gate(self, p: Prepared, pooled: torch.Tensor | None) -> tuple[dict[str, Any], dict[str, float]]:
        """:meth:`gate_check` for a prepared image (waiting for its gate thread's statistics) and the
        timings: ``gate``, what the answer spent on the gate after the forward pass, and, with the gate
        thread, ``gate_background``, what its statistics took there (overlapping other steps)."""
        t0 = time.perf_counter()
        statistics, background_ms = (None, None) if p.statistics is None else p.statistics.result()
        if statistics is None and self.ood is not None and self.ood.uses_statistics:
            statistics = self.gate.statistics(p.decoded.image)  # the gate would compute them anyway
        p.gate_statistics = statistics
        quality = self.gate_check(p.decoded, pooled, statistics)
        timing = {"gate": elapsed_ms(t0)}
        if background_ms is not None:
            timing["gate_background"] = background_ms
        return quality, timing

    def _body(
        self,
        logits: torch.Tensor,
        quality: dict[str, Any],
        timing_ms: dict[str, float],
        pooled: torch.Tensor | None = None,
        statistics: np.ndarray | None = None,
    ) -> FramePrediction:
        """The contract's prediction from one image's logits (calibrated with the card's temperature); with
        ``pooled`` (its pooled features), ``statistics`` (its smear-gate statistics) and an out-of-distribution
        score in the card, the score and threshold go into ``quality`` and an image beyond it is answered
        ``out_of_distribution`` (abstained)."""
        beyond = False
        if self.ood is not None and pooled is not None:
            beyond, fields = self.ood.evaluate(pooled, logits, statistics)
            quality = {**quality, **fields}
        return FramePrediction.build(
            calibrated_probabilities(logits, self.temperature).tolist(),
            classes=self.classes,
            model=self.name,
            version=self.version,
            abstain_threshold=self.abstain_threshold,
            benign_threshold=self.card.get("benign_threshold"),  # Benign operating point; absent in old cards
            quality=quality,
            timing_ms=timing_ms,
            out_of_distribution=beyond,
        )

    # -- requests --------------------------------------------------------------------------
    def predict(self, rows: Sequence[Any]) -> list[dict[str, Any] | RequestError]:
        """One result per row: the prediction body, or the RequestError refusing that row."""
        results: list[dict[str, Any] | RequestError] = [RequestError("internal_error", "not processed")] * len(rows)
        prepared: dict[int, Prepared] = {}
        for i, row in enumerate(rows):
            try:
                prepared[i] = self.prepare(row)
            except RequestError as exc:
                results[i] = exc
        if not prepared:
            return results
        idx = list(prepared)
        t0 = time.perf_counter()
        outputs = self._forward_each_safely(idx, prepared)
        inference_ms = elapsed_ms(t0)
        for i in idx:
            out = outputs.get(i)
            if out is None:
                results[i] = RequestError("internal_error", "inference failed for this image")
                continue
            logits, pooled = out
            p = prepared[i]
            try:
                quality, gate_timing = self._gate(p, pooled)
                t2 = time.perf_counter()
                prediction = self._body(
                    logits,
                    quality,
                    dict(p.timing_ms, inference=inference_ms, gate=gate_timing["gate"]),
                    pooled,
                    p.gate_statistics,
                )
                prediction.timing_ms["postprocess"] = round(elapsed_ms(t2), 3)
                self._finish_timing(prediction.timing_ms, gate_timing)
                prediction.batch_size = len(idx)
                prediction.runtime = self.runtime_name
                results[i] = prediction.to_json()
            except RequestError as exc:
                results[i] = exc
        return results

    @staticmethod
    def _finish_timing(timing: dict[str, float], gate_timing: dict[str, float]) -> None:
        """``total``, the sum of the steps on the answer's path, then ``gate_background`` (not in it)."""
        timing["total"] = round(sum(timing.values()), 3)
        if "gate_background" in gate_timing:
            timing["gate_background"] = round(gate_timing["gate_background"], 3)

    def _forward_each_safely(
        self, idx: list[int], prepared: dict[int, Prepared]
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Batched forward; if the batch fails, each image alone so one failure stays local."""
        try:
            logits, pooled = self.forward(torch.stack([prepared[i].tensor for i in idx]))
            return {i: (logits[k], pooled[k]) for k, i in enumerate(idx)}
        except Exception:  # noqa: BLE001 - isolate the failing image below
            log.exception("batched forward failed; retrying images one by one")
        out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i in idx:
            try:
                logits, pooled = self.forward(prepared[i].tensor.unsqueeze(0))
                out[i] = (logits[0], pooled[0])
            except Exception:  # noqa: BLE001
                log.exception("forward failed for one image")
        return out

    def explain(self, row: Any) -> dict[str, Any]:
        """The prediction body for one request row plus its Grad-CAM heatmap (raises RequestError).

        One CNN pass serves both: the same logits give the probabilities, label and abstention (with
        the semantics of :meth:`predict`: ``label`` null when abstained), the same pooled features
        feed the smear gate. The heatmap explains the most probable class (``explained_class``),
        also when the model abstains.
        """
        p = self.prepare(row, explain=True)
        x = p.tensor.unsqueeze(0)
        t0 = time.perf_counter()
        cam = grad_cam(self.model, x)
        inference_ms = elapsed_ms(t0)
        quality, gate_timing = self._gate(p, cam.pooled)
        t2 = time.perf_counter()
        prediction = self._body(
            cam.logits,
            quality,
            dict(p.timing_ms, inference=inference_ms, gate=gate_timing["gate"]),
            cam.pooled,
            p.gate_statistics,
        )
        prediction.explanation = Explanation(
            explained_class=self.classes[cam.class_index],
            method="grad-cam",
            layer="forward_cnn",
            grid=[[round(float(v), 5) for v in row_] for row_ in cam.grid],
            grid_shape=[int(cam.grid.shape[0]), int(cam.grid.shape[1])],
            overlay_png_base64=overlay_png_base64(p.decoded.image, cam.grid),
        )
        prediction.timing_ms["explain"] = round(elapsed_ms(t2), 3)
        self._finish_timing(prediction.timing_ms, gate_timing)
        prediction.batch_size = 1
        prediction.runtime = "eager"
        return prediction.to_json()
