"""The gate's arithmetic (model_update.gate): the metrics from answers, each declared criterion, an undeclared
criterion refused, the shipped criteria file; and the versions store's numbering and record (serving.versions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.registry import CLASS_NAMES
from model_update.gate import CRITERIA_FILE, check, summarise
from model_update.lab_data import Frame
from serving.versions import PromotionError, Versions

REPO = Path(__file__).resolve().parents[2]


def _frames(labels: list[str]) -> list[Frame]:
    return [Frame(Path(f"/x/{i}.jpg"), CLASS_NAMES.index(c), f"h{i}", "test") for i, c in enumerate(labels)]


def _answer(label: str | None, top: str, p: float = 0.9) -> dict[str, Any]:
    rest = (1 - p) / 3
    return {"label": label, "probabilities": {c: (p if c == top else rest) for c in CLASS_NAMES}}


TRUTH = ["Benign", "Early", "Pre", "Pro", "Pro"]


def test_summarise_counts_referrals_as_caught_and_benign_answers_as_missed() -> None:
    frames = _frames(TRUTH)
    served = summarise(
        [
            _answer("Benign", "Benign"),
            _answer("Early", "Early"),
            _answer(None, "Pre", 0.5),
            _answer("Pro", "Pro"),
            {"refused": "not_a_blood_smear"},
        ],
        frames,
    )
    assert served["malignancy_sensitivity"] == 1.0  # the referral (abstained) and the refused frame are not misses
    assert served["refusal_rate"] == 0.2 and served["abstention_rate"] == 0.25
    assert served["macro_f1"] == 1.0 and served["admitted"] == 4  # the top class of every admitted frame is right
    worse = summarise(
        [
            _answer("Benign", "Benign"),
            _answer("Early", "Early"),
            _answer("Pre", "Pre"),
            _answer("Benign", "Benign"),
            _answer("Pro", "Pro"),
        ],
        frames,
    )
    assert worse["malignant_as_benign"] == ["h3"] and worse["malignancy_sensitivity"] == 0.75
    results = {r["name"]: r for r in check(json.loads(CRITERIA_FILE.read_text())["frames"], served, worse)}
    assert not results["malignancy_sensitivity_not_lower"]["passed"]
    assert not results["no_new_malignant_as_benign"]["passed"] and results["no_new_malignant_as_benign"]["value"] == 1
    assert all(r["passed"] for r in check(json.loads(CRITERIA_FILE.read_text())["frames"], served, served))


def test_macro_f1_and_calibration_bounds_are_the_declared_ones() -> None:
    base = {"malignancy_sensitivity": 1.0, "macro_f1": 0.95, "ece": 0.03, "malignant_as_benign": []}
    criteria = json.loads(CRITERIA_FILE.read_text())["frames"]
    ok = check(criteria, base, dict(base, macro_f1=0.9451, ece=0.0499))
    assert all(r["passed"] for r in ok)
    bad = {r["name"]: r["passed"] for r in check(criteria, base, dict(base, macro_f1=0.9449, ece=0.0501))}
    assert bad == {
        "malignancy_sensitivity_not_lower": True,
        "macro_f1_max_drop": False,
        "calibration_bound": False,
        "no_new_malignant_as_benign": True,
    }
    with pytest.raises(ValueError, match="not one the gate checks"):
        check({"auc_not_lower": {"max_drop": 0}}, base, base)


def test_versions_numbering_and_the_promotion_record(tmp_path: Path) -> None:
    versions = Versions.of("mobilenetv3_lstm", tmp_path / "model_versions", REPO / "model_store")
    base = versions.base_version()
    assert versions.default_version() == base and versions.previous_version() is None
    versions.root.mkdir(parents=True)
    first = versions.next_version(base)
    versions.archive(first).write_bytes(b"x")
    assert versions.next_version(base) != first
    with pytest.raises(PromotionError, match="no gate report"):
        versions.plan_promotion(first)
    versions.note("promote", base, first, "a", "gate.json")
    assert versions.default_version() == first and versions.previous_version() == base
    assert versions.plan_rollback() == (first, base, None)
    versions.note("rollback", first, base, "a", None)
    assert versions.default_version() == base and len(versions.record()["log"]) == 2
    with pytest.raises(PromotionError, match="nothing to roll back"):
        versions.plan_rollback()
