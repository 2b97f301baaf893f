"""The drift watch: control limits, the weekly rows (flags only outside limits and with enough results), baselines
from a gate report and from the shipped card, the page and the dashboard line from real rows."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from core.registry import CLASS_NAMES
from portal.actions.uploads import upload_images
from portal.models_registry.drift import (
    MIN_RESULTS,
    Baseline,
    Result,
    alerts,
    baseline_from_card,
    baseline_from_metrics,
    limits,
    week_of,
    weekly,
)
from tests.portal.conftest import smear_paths, validated
from tests.portal.helpers import complete

REPO = Path(__file__).resolve().parents[2]
BASE = Baseline(
    acceptance=0.95,
    abstention=0.10,
    refusal=0.0,
    class_mix={"Benign": 0.25, "Early": 0.25, "Pre": 0.25, "Pro": 0.25},
    mean_confidence=0.9,
    confidence_sd=0.1,
    source="test",
)


def _results(
    n: int, abstained: int, week: str = "2026-W49", label: str = "Pre", confidence: float = 0.9
) -> list[Result]:
    return [
        Result(
            "m",
            "1.1",
            week,
            "done",
            abstained=i < abstained,
            label="" if i < abstained else label,
            confidence=confidence,
            final_label=label,
        )
        for i in range(n)
    ]


def test_limits_are_three_sigma_and_allow_a_rare_event_over_a_zero_baseline() -> None:
    lo, hi = limits(0.1, 100)
    assert lo == pytest.approx(0.1 - 0.09) and hi == pytest.approx(0.1 + 0.09)
    assert limits(0.0, 100)[1] > 0.0  # a single refusal is not drift yet
    assert limits(0.5, 4) == (0.0, 1.0)


def test_a_week_out_of_limits_is_flagged_and_a_small_week_never() -> None:
    rows = weekly(
        _results(100, abstained=40) + _results(MIN_RESULTS - 1, abstained=MIN_RESULTS - 1, week="2026-W50"),
        {("m", "1.1"): BASE},
        CLASS_NAMES,
    )
    w49, w50 = rows
    assert w49["week"] == "2026-W49" and w49["metrics"]["abstention"]["value"] == 0.4
    assert "abstention" in w49["out_of_limits"]
    assert "class:Pre" in w49["out_of_limits"] and "class:Benign" in w49["out_of_limits"]  # all Pre: the mix moved
    assert "acceptance" not in w49["out_of_limits"]  # reviewers kept every label
    assert w50["out_of_limits"] == []  # too few results to flag
    assert alerts(rows) == [{"model": "m", "week": "2026-W49", "version": "1.1", "metrics": w49["out_of_limits"]}]


def test_a_week_like_the_baseline_is_within_limits() -> None:
    items = []
    for i, c in enumerate(CLASS_NAMES * 25):
        items.append(
            Result(
                "m",
                "1.1",
                "2026-W49",
                "done",
                abstained=i % 10 == 0,
                label="" if i % 10 == 0 else c,
                confidence=0.9,
                final_label=c,
            )
        )
    (row,) = weekly(items, {("m", "1.1"): BASE}, CLASS_NAMES)
    assert row["out_of_limits"] == [], row["metrics"]


def test_confidence_falling_is_flagged() -> None:
    (row,) = weekly(_results(50, abstained=5, confidence=0.6), {("m", "1.1"): BASE}, CLASS_NAMES)
    assert "mean_confidence" in row["out_of_limits"]


def test_baselines_from_a_gate_report_and_from_the_shipped_card() -> None:
    b = baseline_from_metrics(
        {
            "abstention_rate": 0.1,
            "refusal_rate": 0.0,
            "accepted_accuracy": 0.97,
            "class_mix": {"Pre": 1.0},
            "mean_confidence": 0.9,
            "confidence_sd": 0.05,
        },
        "r",
    )
    assert b.abstention == 0.1 and b.mean_confidence == 0.9
    card = json.loads((REPO / "model_store" / "mobilenetv3_lstm.card.json").read_text())
    c = baseline_from_card(card)
    assert c.abstention == pytest.approx(1 - card["metrics"]["abstention"]["coverage"])
    assert sum(c.class_mix.values()) == pytest.approx(1.0) and set(c.class_mix) == set(CLASS_NAMES)
    assert week_of(date(2026, 12, 7)) == "2026-W50"


@pytest.mark.django_db
def test_dashboard_names_the_model_out_of_limits_and_the_page_plots_it(
    technologist: Any, specimen: Any, tech_client: Client
) -> None:
    """Real rows: every answer of the week abstained, against the shipped card's baseline (about 0.1-0.2)."""
    images = upload_images(technologist, specimen, validated(smear_paths(MIN_RESULTS)), ["mobilenetv3_lstm"])
    version = json.loads((REPO / "model_store" / "mobilenetv3_lstm.card.json").read_text())["version"]
    for image in images:
        a = complete(image.analyses.get(), "Pre", abstained=True)
        a.model_version = version
        a.save()
    page = tech_client.get("/").content.decode()
    assert "Drift:" in page and "mobilenetv3_lstm" in page and "abstention" in page
    drift = tech_client.get("/models/drift/").content.decode()
    assert drift.count("<svg") == 4 and "mobilenetv3_lstm: abstention" in drift
