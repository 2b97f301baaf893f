"""A real TorchServe for the serving integration tests, started once per session.

It serves the committed ``model_store/*.mar`` when all four models are there; otherwise it builds
archives from random-init test artifacts (tests/handlers/artifacts.py) in a temporary directory
with ``training.archive``, exactly as ``make archive`` does. Free ports, one torch thread.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from handlers.serve import ServerInfo, start, stop
from tests.handlers.artifacts import build_artifact
from training.archive import REPO, archive_all
from training.registry import model_names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
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
def torchserve(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    ports = {k: _free_port() for k in ("inference", "management", "metrics", "grpc_inference", "grpc_management")}
    info = start(model_store, workdir=tmp_path_factory.mktemp("torchserve"), ports=ports, torch_threads=1)
    try:
        yield info
    finally:
        stop(info=info)
