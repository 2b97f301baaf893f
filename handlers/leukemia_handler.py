"""TorchServe entry point for the four leukemia models (one handler for all of them).

TorchServe instantiates the single class defined here (a handler module may define only one
class: a second one makes the worker crash-loop) and calls :meth:`LeukemiaHandler.initialize`
once, then :meth:`LeukemiaHandler.handle` per batch. Everything else lives in plain modules
(:mod:`handlers.runtime` and below) that are tested without TorchServe.

Per-request results: a JSON body for every request of the batch, with its own HTTP status set by
``context.set_response_status(code, phrase, idx)``: 200 for a prediction or explanation, the
contract's 4xx for a refusal (:mod:`core.errors`). Requests sent to
``/explanations/{model}`` (TorchServe sets the header ``explain: True``), and JSON or v2 requests
with ``"explain": true`` (in a v2 request's ``parameters``), get a Grad-CAM heatmap.
``GET /models/{model}?customized=true`` (management API; TorchServe sends the header ``describe:
True``) answers the forward runtime the worker serves with and how it was chosen
(:meth:`handlers.backends.Selection.describe`) in ``customizedMetadata``.

Torch intra-op threads: ``LEUKEMIA_TORCH_THREADS`` (environment of the TorchServe process), else
1, so that workers do not oversubscribe the CPU (see docker/torchserve/config.properties).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from core.decode import parse_json_body, request_flag
from core.errors import RequestError
from handlers.respond import request_header, respond
from handlers.runtime import ModelRuntime, prepare_worker

__all__ = ["LeukemiaHandler"]

log = logging.getLogger(__name__)


class LeukemiaHandler:
    """Validating, batching TorchServe handler with per-request errors and explanations."""

    def __init__(self) -> None:
        self.runtime: ModelRuntime | None = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        threads = prepare_worker()
        t0 = time.perf_counter()
        model_dir = context.system_properties.get("model_dir")
        self.runtime = ModelRuntime(model_dir)
        self.initialized = True
        log.info(
            "loaded %s %s in %.1f s (torch threads %d, smear gate threshold %.3f, runtime %s)",
            self.runtime.name,
            self.runtime.version,
            time.perf_counter() - t0,
            threads,
            self.runtime.gate.threshold,
            self.runtime.selection.describe(),
        )

    @staticmethod
    def _is_explain(context: Any, idx: int, row: Any) -> bool:
        """``/explanations/{model}`` (TorchServe sets the header ``explain: True``), or ``"explain": true``
        in a JSON body or in a v2 request's ``parameters`` (KServe's v2 protocol has no explain verb)."""
        return request_flag(row, "explain", request_header(context, idx, "explain"))

    def handle(self, data: list[Any], context: Any) -> list[Any]:
        if self.runtime is None:
            raise RuntimeError("handler used before initialize()")
        runtime = self.runtime
        if data and request_header(context, 0, "describe") == "True":
            return [json.dumps(runtime.selection.describe(), separators=(",", ":"))]
        data = [parse_json_body(row) for row in data]
        results: list[dict[str, Any] | RequestError] = [RequestError("internal_error", "not processed")] * len(data)
        predict_idx = []
        for i, row in enumerate(data):
            if self._is_explain(context, i, row):
                try:
                    results[i] = runtime.explain(row)
                except RequestError as exc:
                    results[i] = exc
                except Exception:  # noqa: BLE001 - never let one request kill the batch
                    log.exception("explanation failed")
                    results[i] = RequestError("internal_error", "explanation failed")
            else:
                predict_idx.append(i)
        if predict_idx:
            try:
                answers = runtime.predict([data[i] for i in predict_idx])
            except Exception:  # noqa: BLE001
                log.exception("prediction batch failed")
                answers = [RequestError("internal_error", "prediction failed")] * len(predict_idx)
            for i, answer in zip(predict_idx, answers, strict=True):
                results[i] = answer
        return respond(results, context, data)
