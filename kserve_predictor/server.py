"""KServe's model server (kserve 0.21.0) with the project's models loaded from their .mar archives::

    python -m kserve_predictor --model_dir /mnt/models                        # in the container (a layout)
    python -m kserve_predictor --model_dir model_store --models mobilenetv3_lstm,wbc_cells --http_port 8090

``--model_dir``: a KServe storage layout (``model-store/*.mar`` + ``config/config.properties``, what
``make kserve-layout`` writes and an InferenceService's ``storageUri`` mounts at /mnt/models) or a model
store (``*.mar``, with docker/torchserve/config.properties); ``--config`` overrides the configuration the
batch settings are read from. ``--models``: which archives to serve, comma-separated (default: every one
found). KServe's own options (``--http_port``, ``--enable_grpc``, ...) keep their meaning; gRPC is off
unless asked for (the manifests and the portal speak v2 over REST). Torch threads: ``LEUKEMIA_TORCH_THREADS``
(default 1), as in the TorchServe workers.

Every model is unpacked (:func:`kserve_predictor.artefacts.unpack`) and loaded before the server listens,
so ``/v2/health/ready`` and ``/v2/models/{model}/ready`` answer only once every model here is ready; a
model that fails to load stops the process (a pod that restarts, rather than one that serves part).
Refusals keep the contract's status and body (:func:`install_error_handlers`); a request body larger than
the configuration's ``max_request_size`` (TorchServe's limit) is refused as ``image_too_large`` (413) from
its Content-Length, before it is read (:func:`install_request_limit`).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any

import kserve  # type: ignore[import-not-found]
from fastapi.exceptions import RequestValidationError  # type: ignore[import-not-found]
from fastapi.responses import JSONResponse  # type: ignore[import-not-found]
from kserve import model_server  # type: ignore[import-not-found]

from core.errors import RequestError
from core.registry import cell_model_names
from handlers.runtime import prepare_worker
from kserve_predictor.artefacts import archives, batching, code_drift, config_for, unpack
from kserve_predictor.model import CellModel, FrameModel, Refused, ServedModel, refusal_body
from serving.torchserve import parse_properties

__all__ = ["build_parser", "build_models", "install_error_handlers", "install_request_limit", "main"]

log = logging.getLogger(__name__)
#: where KServe mounts an InferenceService's storageUri
KSERVE_MOUNT = Path("/mnt/models")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None, parents=[model_server.parser], add_help=False
    )
    parser.add_argument("--model_dir", type=Path, default=KSERVE_MOUNT, help="a KServe storage layout or model store")
    parser.add_argument("--models", default="", help="comma-separated model names (default: every archive)")
    parser.add_argument("--config", type=Path, default=None, help="TorchServe configuration with batch settings")
    parser.set_defaults(enable_grpc=False)
    return parser


def build_models(model_dir: Path, names: Sequence[str], config: Path, work_dir: Path) -> list[ServedModel]:
    """The models ``names`` (every archive when empty) of ``model_dir``, unpacked under ``work_dir``, not loaded."""
    found = archives(model_dir)
    names = list(names) or list(found)
    missing = [n for n in names if n not in found]
    if missing or not names:
        raise SystemExit(f"no archive for {', '.join(missing) or 'any model'} in {model_dir}")
    models: list[ServedModel] = []
    for name in names:
        drift = code_drift(found[name])
        if drift:
            log.warning("%s: the archive's code differs from this image's in %s", name, ", ".join(drift))
        model_path = unpack(found[name], work_dir / name)
        if name in cell_model_names():
            models.append(CellModel(name, model_path))
        else:
            models.append(FrameModel(name, model_path, *batching(config, name)))
    return models


def install_error_handlers(app: Any) -> None:
    """A refusal answers with its contract status and body (:func:`kserve_predictor.model.refusal_body`);
    a v2 request that KServe's request model rejects (no ``inputs``, no ``shape``, ...) is ``bad_request``
    (400) in the same form, as the handlers' refusal of a malformed v2 request, not FastAPI's 422."""

    async def refused(_: Any, exc: Refused) -> JSONResponse:
        log.info("refused: %s", exc)
        return JSONResponse(status_code=exc.error.status, content=refusal_body(exc.error))

    async def malformed(_: Any, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        error = RequestError("bad_request", f"not a v2 inference request: {where or 'body'}: {first.get('msg', '')}")
        return JSONResponse(status_code=HTTPStatus.BAD_REQUEST, content=refusal_body(error))

    app.add_exception_handler(Refused, refused)
    app.add_exception_handler(RequestValidationError, malformed)


def install_request_limit(app: Any, max_bytes: int) -> None:
    """Refuse a request whose Content-Length exceeds ``max_bytes`` with ``image_too_large`` (413), unread."""

    @app.middleware("http")
    async def limit(request: Any, call_next: Any) -> Any:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_bytes:
            error = RequestError("image_too_large", f"the request body is larger than {max_bytes} bytes")
            return JSONResponse(status_code=error.status, content=refusal_body(error))
        return await call_next(request)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threads = prepare_worker()
    config = args.config or config_for(args.model_dir)
    names = [n for n in args.models.split(",") if n]
    with tempfile.TemporaryDirectory(prefix="leukemia-kserve-") as work:
        models = build_models(args.model_dir, names, config, Path(work))
        for model in models:
            model.load()
        log.info("serving %s (torch threads %d, batch settings from %s)", ", ".join(names or []), threads, config)
        install_error_handlers(model_server.app)
        max_request = dict(parse_properties(config.read_text())).get("max_request_size")
        if max_request:
            install_request_limit(model_server.app, int(max_request))
        server = kserve.ModelServer(
            http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc, workers=1
        )
        server.start(models)
