"""The committed archives answer real frames exactly as recorded (served_answers.json), bit for bit.

Each archive's own handler (its packed code, not the tree's: :mod:`tests.release.served_answers`) answers
the same few real frames, ALL-IDB/C-NMC style B-ALL frames, a PBC cell image and a BCCD smear frame,
for the four frame models and the cell model; probabilities, labels, quality scores, cell boxes, outlines
and types must equal the recorded ones (timings left out). A refactor of the served code must keep them.

Record again (only for an intended change of the answers): ``LEUKEMIA_RECORD_SERVED=1 pytest <this file>``.
"""

from __future__ import annotations

import json
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
    assert answers == recorded
