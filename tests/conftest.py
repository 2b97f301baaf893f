"""Shared fixtures: where ../shared lives, and real images from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LEUKEMIA_SHARED", REPO.parent / "shared"))
DATA_ALL4 = SHARED / "data" / "all4"
XCEPTION_WEIGHTS = SHARED / "weights" / "legacy_xception.keras_in1k.backbone.fp16.safetensors"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found at {SHARED}; set LEUKEMIA_SHARED")
    return SHARED
