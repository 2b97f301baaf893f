"""The served models as ``kserve.Model`` s: the frame classifiers (:class:`FrameModel`, on
:class:`handlers.runtime.ModelRuntime`) and the cell model (:class:`CellModel`, on
:class:`handlers.cell_runtime.CellRuntime`), answering as the TorchServe handlers answer.

A request arrives as KServe parsed it: an Open Inference Protocol (v2) ``InferRequest`` (``POST
/v2/models/{model}/infer``) or a JSON object (KServe's v1 ``:predict`` and ``:explain``). It is turned
back into the dict a TorchServe handler receives (:func:`request_dict`) and handed to the same runtime
calls the handlers make, so the answer's body is the runtime's, field for field, whatever the runtime
adds to it; a v2 request is answered in v2 form (:func:`core.v2.to_v2`), a JSON one with the contract's
body. The verbs: v2 ``parameters`` ``{"explain": true}`` (frame models: the Grad-CAM heatmap) or
``{"annotate": true}`` (the cell model: the annotated image), as with TorchServe; KServe's v1
``:explain`` asks either of them.

A refusal (:class:`core.errors.RequestError`: ``not_an_image``, ``not_a_blood_smear``, ...) is raised
as :class:`Refused` and answered by :func:`refusal_response` with the contract's HTTP status and body
(``code``, ``message``, its details) plus the v2 error text (``error``, :func:`core.v2.v2_error`), so
that a client reading either form finds the code. A bug is ``internal_error`` (500), as in the handlers.

Batching: a frame model batches concurrent predictions as TorchServe does, up to its ``batchSize``,
waiting at most ``maxBatchDelay`` for batch-mates (both from the TorchServe configuration:
:func:`kserve_predictor.artefacts.batching`); :meth:`ModelRuntime.predict` answers each row of a batch
on its own. Every runtime call runs on one inference thread per model (TorchServe's one worker per model),
so the event loop keeps accepting and parsing requests meanwhile, and explanations and cell analyses
queue behind the batch that is running. Readiness: a model is ready once its runtime has loaded
(:meth:`ServedModel.load`); the server starts after every model it serves is (kserve_predictor.server).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kserve  # type: ignore[import-not-found]

from core.decode import request_flag
from core.errors import RequestError
from core.v2 import INPUT_NAME, to_v2, v2_error, v2_request
from handlers.cell_runtime import CellRuntime, wants_annotation
from handlers.runtime import ModelRuntime

__all__ = ["Refused", "refusal_body", "request_dict", "ServedModel", "FrameModel", "CellModel"]

log = logging.getLogger(__name__)


class Refused(Exception):
    """A request refused with the contract's code (:class:`core.errors.RequestError`)."""

    def __init__(self, error: RequestError) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


def refusal_body(error: RequestError) -> dict[str, Any]:
    """The JSON of a refusal: the contract's ``{"code", "message", ...details}`` and the v2 ``error`` text."""
    return {**error.to_dict(), **v2_error(error)}


def request_dict(payload: Any) -> Any:
    """The request as a TorchServe handler reads it: the JSON object itself, or for KServe's parsed v2
    ``InferRequest`` the v2 request dict it came from (inputs, ``id``, ``parameters``)."""
    if isinstance(payload, dict):
        return payload
    request: dict[str, Any] = {
        "inputs": [
            {"name": i.name, "datatype": i.datatype, "shape": list(i.shape), "data": i.data} for i in payload.inputs
        ]
    }
    if payload.id is not None:
        request["id"] = payload.id
    if payload.parameters:
        request["parameters"] = dict(payload.parameters)
    return request


class ServedModel(kserve.Model):  # type: ignore[misc]
    """One served model: its runtime loaded from an unpacked archive, its inference thread, its answers."""

    def __init__(self, name: str, model_dir: Path, batch_size: int = 1, max_delay_s: float = 0.0) -> None:
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.batch_size = max(1, int(batch_size))
        self.max_delay_s = max(0.0, float(max_delay_s))
        self.runtime: Any = None
        self.version: str | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")

    # -- loading -------------------------------------------------------------------------------
    def _load_runtime(self) -> Any:
        raise NotImplementedError

    def load(self) -> bool:
        """Load the runtime (fails closed: a card without a valid smear gate raises); ready only then."""
        t0 = time.perf_counter()
        runtime = self._load_runtime()
        if runtime.name != self.name:
            raise ValueError(f"archive for {self.name} holds the model card of {runtime.name}")
        self.runtime, self.version = runtime, runtime.version
        self.ready = True
        log.info("loaded %s %s in %.1f s", self.name, self.version, time.perf_counter() - t0)
        return bool(self.ready)

    def start(self) -> None:
        """KServe's start hook (it would set ready unconditionally): ready only with a loaded runtime."""
        self.ready = self.runtime is not None

    def stop(self) -> None:
        self.ready = False
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- metadata (GET /v2/models/{model}) ---------------------------------------------------------
    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": "result", "datatype": "BYTES", "shape": [1]}]

    # -- verbs ---------------------------------------------------------------------------------------
    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
        return await self._respond(payload, headers, explain=False)

    async def explain(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
        return await self._respond(payload, headers, explain=True)

    async def _respond(self, payload: Any, headers: dict[str, str] | None, explain: bool) -> dict[str, Any]:
        request = request_dict(payload)
        body = await self._answer({"body": request}, explain)
        if v2_request(request) is None:
            return body
        answer = to_v2(body, request)
        # KServe's v2 answer needs an id: the request's, else its x-request-id, else a new one
        answer.setdefault("id", (headers or {}).get("x-request-id") or str(uuid.uuid4()))
        return answer

    async def _answer(self, row: dict[str, Any], explain: bool) -> dict[str, Any]:
        raise NotImplementedError

    async def _on_thread(self, what: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        """``fn(*args)`` on the inference thread: its body, or :class:`Refused` (a bug: ``internal_error``)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        except RequestError as exc:
            raise Refused(exc) from None
        except Exception:  # noqa: BLE001 - never a bare 500 without the contract's code
            log.exception("%s: %s failed", self.name, what)
            raise Refused(RequestError("internal_error", f"{what} failed")) from None


class FrameModel(ServedModel):
    """A frame classifier: batched predictions, explanations one at a time (as the handler does)."""

    def __init__(self, name: str, model_dir: Path, batch_size: int = 1, max_delay_s: float = 0.0) -> None:
        super().__init__(name, model_dir, batch_size, max_delay_s)
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] | None = None
        self._batcher: asyncio.Task[None] | None = None

    def _load_runtime(self) -> ModelRuntime:
        return ModelRuntime(self.model_dir)

    async def _answer(self, row: dict[str, Any], explain: bool) -> dict[str, Any]:
        if explain or request_flag(row, "explain"):
            return await self._on_thread("explanation", self.runtime.explain, row)
        if self._queue is None:  # created on the server's event loop, at the first request
            self._queue = asyncio.Queue()
            self._batcher = asyncio.get_running_loop().create_task(self._batch_loop())
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((row, done))
        result = await done
        if isinstance(result, RequestError):
            raise Refused(result)
        return dict(result)

    def _drain(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        assert self._queue is not None
        while len(batch) < self.batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _batch_loop(self) -> None:
        """TorchServe's batching: up to ``batch_size`` requests, the first waiting at most ``max_delay_s``
        for the rest (none when the queue already fills the batch); one batch on the thread at a time."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            self._drain(batch)
            if len(batch) < self.batch_size and self.max_delay_s > 0:
                await asyncio.sleep(self.max_delay_s)
                self._drain(batch)
            live = [(row, done) for row, done in batch if not done.done()]  # a client that left: not run
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.runtime.predict, [row for row, _ in live])
            except Exception:  # noqa: BLE001 - the batch fails alone, the loop goes on
                log.exception("%s: prediction batch failed", self.name)
                results = [RequestError("internal_error", "prediction failed")] * len(live)
            for (_, done), result in zip(live, results, strict=True):
                if not done.done():
                    done.set_result(result)


class CellModel(ServedModel):
    """The cell model: one frame per request (batchSize 1 in TorchServe too); annotated on request."""

    def _load_runtime(self) -> CellRuntime:
        return CellRuntime(self.model_dir)

    async def _answer(self, row: dict[str, Any], explain: bool) -> dict[str, Any]:
        annotate = explain or wants_annotation(row)
        return await self._on_thread("cell analysis", self.runtime.analyse, row, annotate)
