"""TorchServe entry point for the cell-level model ``wbc_cells`` (see :mod:`handlers.cell_runtime`).

As :mod:`handlers.leukemia_handler`: TorchServe instantiates the one class defined here, calls
:meth:`CellsHandler.initialize` once and :meth:`CellsHandler.handle` per batch; every request of a
batch gets its own body and status (:func:`handlers.respond.respond`). The header ``annotate: 1``, the
JSON field ``"annotate": true`` (v2: ``parameters.annotate``) or ``/explanations/wbc_cells`` adds
``annotated_png`` (TorchServe does not pass the query string to handlers). Torch threads:
``LEUKEMIA_TORCH_THREADS``, else 1.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from core.decode import parse_json_body
from core.errors import RequestError
from handlers.cell_runtime import CellRuntime, wants_annotation
from handlers.respond import request_header, respond
from handlers.runtime import prepare_worker

__all__ = ["CellsHandler"]

log = logging.getLogger(__name__)


class CellsHandler:
    """Validating TorchServe handler: cells found, outlined and typed, per request."""

    def __init__(self) -> None:
        self.runtime: CellRuntime | None = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        threads = prepare_worker()
        t0 = time.perf_counter()
        self.runtime = CellRuntime(context.system_properties.get("model_dir"))
        self.initialized = True
        log.info(
            "loaded %s %s in %.1f s (torch threads %d)",
            self.runtime.name,
            self.runtime.version,
            time.perf_counter() - t0,
            threads,
        )

    def handle(self, data: list[Any], context: Any) -> list[Any]:
        if self.runtime is None:
            raise RuntimeError("handler used before initialize()")
        data = [parse_json_body(row) for row in data]
        results: list[dict[str, Any] | RequestError] = []
        for i, row in enumerate(data):
            try:
                annotate = wants_annotation(
                    row, request_header(context, i, "annotate"), request_header(context, i, "explain")
                )
                results.append(self.runtime.analyse(row, annotate))
            except RequestError as exc:
                results.append(exc)
            except Exception:  # noqa: BLE001 - never let one request kill the batch
                log.exception("cell analysis failed")
                results.append(RequestError("internal_error", "cell analysis failed"))
        return respond(results, context, data)
