"""The committed archives answer real frames as recorded (served_answers.json), to the CPU's float rounding.

Each archive's own handler (its packed code, not the tree's: :mod:`tests.release.served_answers`) answers
the same few real frames, ALL-IDB/C-NMC style B-ALL frames, a PBC cell image and a BCCD smear frame,
for the four frame models and the cell model; probabilities, labels, quality scores, cell boxes, outlines
and types must equal the recorded ones (timings left out). A refactor of the served code must keep them.
Numbers are compared to ``REL``/``ABS``: another CPU's kernels change a probability in its 6th-7th digit (measured:
at most 2e-6 relative between two machines of this project), which a change of the served code goes far beyond;
labels, reasons, flags, counts and keys must be equal.

Record again (only for an intended change of the answers): ``LEUKEMIA_RECORD_SERVED=1 pytest <this file>``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.paths import DATA

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("served_answers.json")
DRIVER = Path(__file__).with_name("served_answers.py")
MODELS = ("effnetb3_bigru", "effnetb3_vit", "mobilenetv3_lstm", "xception_bigru", "wbc_cells")
#: data/<path> of the frames answered (read from the shared data, never committed)
FRAMES = (
    "all4/original/Benign/WBC-Benign-001.jpg",
    "all4/original/Pro/WBC-Malignant-Pro-001.jpg",
    "pbc/neutrophil/BNE_100878.jpg",
    "bccd/JPEGImages/BloodImage_00000.jpg",
)

pytestmark = pytest.mark.slow
REL, ABS = 1e-4, 1e-5


def mismatches(got: object, recorded: object, path: str = "") -> list[str]:
    """Where ``got`` differs from ``recorded``: floats beyond REL/ABS, anything else not equal."""
    if isinstance(recorded, dict) and isinstance(got, dict):
        keys = sorted(set(got) | set(recorded))
        return [
            m for k in keys for m in mismatches(got.get(k, "<missing>"), recorded.get(k, "<missing>"), f"{path}/{k}")
        ]
    if isinstance(recorded, list) and isinstance(got, list) and len(got) == len(recorded):
        return [m for i, (g, r) in enumerate(zip(got, recorded, strict=True)) for m in mismatches(g, r, f"{path}[{i}]")]
    numbers = (int, float)
    if isinstance(recorded, float) and isinstance(got, numbers) and not isinstance(got, bool):
        return [] if math.isclose(got, recorded, rel_tol=REL, abs_tol=ABS) else [f"{path}: {got} != {recorded}"]
    return [] if got == recorded and type(got) is type(recorded) else [f"{path}: {got!r} != {recorded!r}"]


def _answers(model: str) -> dict:
    frames = [DATA / f for f in FRAMES]
    missing = [str(f) for f in frames if not f.is_file()]
    if missing:
        pytest.skip(f"shared data missing: {missing}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the archive's code only
    out = subprocess.run(
        [sys.executable, str(DRIVER), str(REPO / "model_store" / f"{model}.mar"), *map(str, frames)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("model", MODELS)
def test_served_answers_unchanged(model: str) -> None:
    answers = _answers(model)
    if os.environ.get("LEUKEMIA_RECORD_SERVED") == "1":
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        golden[model] = answers
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    recorded = json.loads(GOLDEN.read_text())[model]
    assert not mismatches(answers, recorded), mismatches(answers, recorded)[:20]


def test_the_comparison_tolerates_rounding_only() -> None:
    answer = {"label": "Pre", "abstained": False, "probabilities": {"Pre": 0.6520808935, "Early": 0.29753598}}
    rounded = {"label": "Pre", "abstained": False, "probabilities": {"Pre": 0.6520802974, "Early": 0.29753655}}
    assert not mismatches(rounded, answer)
    assert mismatches({**rounded, "label": "Early"}, answer) == ["/label: 'Early' != 'Pre'"]
    assert mismatches({**rounded, "abstained": 0}, answer)  # a flag is not a number
    assert mismatches({**rounded, "probabilities": {"Pre": 0.66, "Early": 0.29753598}}, answer)
    assert mismatches({"label": "Pre"}, answer)  # a missing key
    assert mismatches({**answer, "cells": []}, answer)  # an extra one
