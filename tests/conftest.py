"""Shared fixtures: where ../shared lives, and real images from it."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from core import paths

REPO = Path(__file__).resolve().parent.parent
SHARED = paths.SHARED
DATA_ALL4 = SHARED / "data" / "all4"
XCEPTION_WEIGHTS = SHARED / "weights" / "legacy_xception.keras_in1k.backbone.fp16.safetensors"


def load_module(name: str, path: Path) -> ModuleType:
    """A script that is not in a package (docker/*.py) imported by its path, as ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found at {SHARED}; set LEUKEMIA_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model_store/ when it holds all four archives; else random-init test archives built in tmp.

    The test archives are built from tests/handlers/artifacts.py with ``training.archive``, exactly
    as ``make archive`` does.
    """
    import torch

    from core.registry import model_names
    from tests.handlers.artifacts import build_artifact
    from training.archive import archive_all

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


#: KServe's model server, in its own environment (make kserve-env)
KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"
#: the served models the KServe tests put behind it (one frame classifier, the cell model)
KSERVE_MODELS = ("mobilenetv3_lstm", "wbc_cells")


@pytest.fixture(scope="session")
def kserve_torchserve(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real TorchServe serving :data:`KSERVE_MODELS` with the configuration KServe's runtime needs
    (docker/kserve_layout.py: token authorization off, access control being the cluster's): the predictor
    host behind KServe's model server. Yields its ``ServerInfo``."""
    from serving.torchserve import DEFAULT_CONFIG, free_ports, parse_properties, start, stop

    layout = load_module("deploy_kserve_layout", REPO / "docker" / "kserve_layout.py")
    work = tmp_path_factory.mktemp("kserve")
    props = dict(parse_properties(DEFAULT_CONFIG.read_text()))
    props["disable_token_authorization"] = layout.OVERRIDES["disable_token_authorization"]
    config = work / "config.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    info = start(model_store, models=list(KSERVE_MODELS), workdir=work / "ts", config=config, ports=free_ports())
    try:
        yield info
    finally:
        stop(info=info)


@contextlib.contextmanager
def kserve_model_server(predictor: Any, log_path: Path, port: int | None = None) -> Iterator[tuple[str, Any]]:
    """KServe's model server (tests/integration/kserve_proxy.py) forwarding the Open Inference Protocol (v2)
    to ``predictor`` (a TorchServe's ``ServerInfo``), as a KServe predictor runs it, on ``port`` (a free one
    if None). Yields its base URL, once ready, and its process; stops it on leaving, if it still runs."""
    import subprocess
    import time

    import requests

    from serving.torchserve import free_ports

    if not KSERVE_PYTHON.is_file():
        pytest.fail(f"{KSERVE_PYTHON} not found: run `make kserve-env` (make test does)")
    port = port or free_ports()["inference"]
    env = {
        "KSERVE_HTTP_PORT": str(port),
        "KSERVE_PREDICTOR": predictor.inference_url.removeprefix("http://"),
        "KSERVE_MODELS": ",".join(KSERVE_MODELS),
        "PATH": "/usr/bin:/bin",
    }
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(KSERVE_PYTHON), str(REPO / "tests" / "integration" / "kserve_proxy.py")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"KServe's model server did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.25)
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
