from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.handlers.artifacts import unpacked_model_dir


@pytest.fixture(scope="session", autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mobilenet_model_dir(mobilenet_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpacked_model_dir(mobilenet_artifact, tmp_path_factory.mktemp("model_dir"))
