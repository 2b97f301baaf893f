"""Shared fixtures: where ../shared lives, and real images from it."""

from __future__ import annotations

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
