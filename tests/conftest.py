"""Shared fixtures: where ../shared lives, and real images from it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core import paths

REPO = Path(__file__).resolve().parent.parent
SHARED = paths.SHARED
DATA_ALL4 = SHARED / "data" / "all4"
XCEPTION_WEIGHTS = SHARED / "weights" / "legacy_xception.keras_in1k.backbone.fp16.safetensors"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found at {SHARED}; set LEUKEMIA_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def mobilenet_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init ``artifacts/mobilenetv3_lstm`` (tests/handlers/artifacts.py): what training writes."""
    import torch

    from tests.handlers.artifacts import build_artifact

    torch.set_num_threads(1)
    return build_artifact("mobilenetv3_lstm", tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model_store/ when it holds all four archives; else random-init test archives built in tmp.

    The test archives are built from tests/handlers/artifacts.py with ``release.archive``, exactly
    as ``make archive`` does.
    """
    import torch

    from core.registry import model_names
    from release.archive import archive_all
    from tests.handlers.artifacts import build_artifact

    committed = REPO / "model_store"
    if all((committed / f"{m}.mar").is_file() for m in model_names()):
        return committed
    torch.set_num_threads(1)
    artifacts = tmp_path_factory.mktemp("artifacts")
    for i, name in enumerate(model_names()):
        build_artifact(name, artifacts, seed=i)
    store = tmp_path_factory.mktemp("model_store")
    archive_all(artifacts, store)
    return store


@pytest.fixture(scope="session")
def torchserve(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real TorchServe for the whole session (serving and portal suites), started through serving.torchserve."""
    from serving.torchserve import free_ports, start, stop

    info = start(model_store, workdir=tmp_path_factory.mktemp("torchserve"), ports=free_ports(), torch_threads=1)
    try:
        yield info
    finally:
        stop(info=info)


#: the served models the KServe tests put behind it (one frame classifier, the cell model)
KSERVE_MODELS = ("mobilenetv3_lstm", "wbc_cells")


@pytest.fixture(scope="session")
def kserve_torchserve(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real TorchServe serving :data:`KSERVE_MODELS` with the configuration KServe's runtime needs
    (:func:`bench.kserve_server.torchserve_config`): the predictor host behind KServe's model server. Yields its
    ``ServerInfo``."""
    from bench.kserve_server import torchserve_config
    from serving.torchserve import free_ports, start, stop

    work = tmp_path_factory.mktemp("kserve")
    config = torchserve_config(work / "config.properties")
    info = start(model_store, models=list(KSERVE_MODELS), workdir=work / "ts", config=config, ports=free_ports())
    try:
        yield info
    finally:
        stop(info=info)


@contextlib.contextmanager
def kserve_model_server(predictor: Any, log_path: Path, port: int | None = None) -> Iterator[tuple[str, Any]]:
    """KServe's model server (:func:`bench.kserve_server.start_model_server`) in front of ``predictor`` (a
    TorchServe's ``ServerInfo``) on ``port`` (a free one if None). Yields its base URL, once ready, and its
    process; stops it on leaving, if it still runs."""
    from bench.kserve_server import start_model_server
    from serving.torchserve import free_ports

    try:
        url, proc = start_model_server(
            predictor.inference_url, KSERVE_MODELS, port or free_ports()["inference"], log_path
        )
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.fixture(scope="session")
def kserve(kserve_torchserve: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """KServe's model server in front of :func:`kserve_torchserve` (:func:`kserve_model_server`). Yields its
    base URL."""
    with kserve_model_server(kserve_torchserve, tmp_path_factory.mktemp("kserve_server") / "kserve.log") as (url, _):
        yield url


@pytest.fixture(scope="session")
def kserve_predictor(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The project's own KServe predictor (kserve_predictor/, in KServe's environment: ``make kserve-env``;
    :func:`bench.kserve_server.start_predictor`) serving :data:`KSERVE_MODELS` from the same archives as
    :func:`kserve_torchserve`, all in one server. Yields its base URL, once every model is ready."""
    from bench.kserve_server import start_predictor
    from serving.torchserve import free_ports

    log_path = tmp_path_factory.mktemp("kserve_predictor") / "predictor.log"
    try:
        url, proc = start_predictor(model_store, KSERVE_MODELS, free_ports()["inference"], log_path)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
