"""training.cell_card: the shipped card renders as committed; the hand-labelled section."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from training.cell_card import HAND_LABEL_ROWS, render_cell_markdown

ROOT = Path(__file__).resolve().parents[2]
CARD = json.loads((ROOT / "model_store" / "wbc_cells.card.json").read_text())


def test_the_shipped_card_page_is_its_json_rendered() -> None:
    assert render_cell_markdown(CARD) == (ROOT / "model_store" / "wbc_cells.md").read_text()


def _share(count: int, of: int) -> dict[str, object]:
    return {"count": count, "of": of, "share": count / of, "wilson95": [0.1, 0.9], "cluster_bootstrap95": [0.2, 0.8]}


def test_hand_labels_are_shown_beside_the_served_path_and_only_when_measured() -> None:
    card = copy.deepcopy(CARD)
    card["metrics"]["hand_labels"] = {}
    assert "Hand-labelled cells" not in render_cell_markdown(card)
    labels = {key: {**_share(3, 4), "clusters": 2} for _, key in HAND_LABEL_ROWS}
    labels |= {"labelled_cells": 7, "frames": 2, "matched": 7, "iou": 0.5, "frames_by_class": {"Benign": 1, "Pre": 1}}
    labels |= {"labelled_by_category": {"blast_like": 4, "not_a_cell": 3}}
    labels.pop("blast_calls_among_other_white")
    card["metrics"]["hand_labels"] = labels
    page = render_cell_markdown(card)
    section = page.split("### Hand-labelled cells (served path)")[1].split("###")[0]
    assert "7 cells the served pipeline found on 2 all4 validation frames (1 Benign, 1 Pre frames)" in section
    assert "blast_like 4, not_a_cell 3" in section and "an engineer, not a haematologist" in section
    assert "| Blast called: blast_like cells (sensitivity) | 3/4 | 0.750 | 0.100-0.900 | 0.200-0.800 (2 blocks) |" in (
        section
    )
    assert "other white cells" not in section  # a measure that is missing is not shown
    assert page.index("### Served path") < page.index("### Hand-labelled cells") < page.index("### Cell typer on")
