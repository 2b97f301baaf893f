"""Model cards: a card built like training.evaluate builds it validates and renders; bad cards fail."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from core.card import CardError, validate_card
from core.registry import get_spec
from training.card import base_card, render_markdown, summary_table, write_model_store_readme


def _card() -> dict[str, Any]:
    card = base_card(
        get_spec("xception_bigru"), 21_000_000, {"source": "file", "path": "w.safetensors", "sha256": "ab"}
    )
    per = {"accuracy": 0.95, "macro_f1": 0.94, "ece": 0.02}
    card.update(
        temperature=1.3,
        abstain_threshold=0.7,
        smear_gate={
            "kind": "logistic_image_statistics",
            "threshold": 0.5,
            "measured_rates": {"bccd_other_lab": {"n": 10, "accepted": 1.0, "should_accept": True}},
        },
        metrics={
            "original": {
                "accuracy": 0.97,
                "macro_f1": 0.965,
                "per_class": {"Benign": {"precision": 1.0, "recall": 0.9, "f1": 0.95, "support": 9}},
            },
            "perturbations": {"grayscale": per, "stain_normalized": per},
            "calibration": {"ece_before": 0.05, "ece_after": 0.02},
            "abstention": {"coverage": 0.9, "accepted_accuracy": 0.985},
            "baseline_colour_histogram": {
                "original": {"accuracy": 0.98, "macro_f1": 0.97},
                "grayscale": {"macro_f1": 0.5},
            },
            "plots": {"confusion": "docs/models/x_confusion.png", "reliability": "docs/models/x_reliability.png"},
        },
        training={
            "recipe": "cached",
            "wall_time_s": 600.0,
            "hardware": {"device": "cpu"},
            "data": {"manifest_sha256": "ff"},
        },
    )
    return card


def test_card_validates_and_renders() -> None:
    card = validate_card(_card())
    md = render_markdown(card)
    assert md.startswith("# Model card: xception_bigru")
    for text in ("0.9650", "stain-normalised", "bccd_other_lab", "Decision support", "temperature 1.3", "ff"):
        assert text in md, text
    table = summary_table([card])
    assert "[xception_bigru](xception_bigru.md)" in table and "colour-histogram baseline" in table


def test_readme_written(tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_model_store_readme([_card()], tmp_path / "README.md")
    assert "| model |" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.pop("smear_gate"),
        lambda c: c.update(temperature=0),
        lambda c: c.update(abstain_threshold=1.5),
        lambda c: c.update(input_size="224"),
        lambda c: c.update(std=[0.5, 0.5]),
    ],
)
def test_bad_cards_fail(mutate) -> None:  # type: ignore[no-untyped-def]
    card = copy.deepcopy(_card())
    mutate(card)
    with pytest.raises(CardError):
        validate_card(card)
    with pytest.raises(CardError):
        render_markdown(card)
