"""The ensemble (core.ensemble applies it; training.ensemble fits it) and the committed parameters."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.ensemble import ENSEMBLE_FILE, Ensemble, EnsembleError, pool
from core.registry import CLASS_NAMES, model_names
from training.calibrate import block_folds
from training.ensemble import COMBINERS, _fit_log_linear, fit_combiner, macro_f1_over_deals, pool_probs
from training.member_outputs import MemberOutputs

REPO = Path(__file__).resolve().parents[2]
MEMBERS = model_names()


def _doc(**overrides: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "version": "1.0",
        "method": "log_linear_pool",
        "classes": list(CLASS_NAMES),
        "members": [
            {"name": m, "version": "1.0", "weight": w} for m, w in zip(MEMBERS, (0.4, 0.3, 0.2, 0.1), strict=True)
        ],
        "temperature": 0.8,
        "abstain_threshold": 0.6,
        "benign_threshold": 0.95,
        "min_members": 3,
    } | overrides


def _answers(rows: np.ndarray, version: str = "1.0") -> dict[str, tuple[str, dict[str, float]]]:
    return {
        m: (version, dict(zip(CLASS_NAMES, map(float, r), strict=True))) for m, r in zip(MEMBERS, rows, strict=True)
    }


def test_core_pool_is_the_fitted_formula() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=(5, 4))  # 5 frames, 4 members
    weights = np.array([0.4, 0.3, 0.2, 0.1])
    for method in ("log_linear_pool", "linear_pool"):
        ours = pool_probs(method, weights, probs, 0.8)
        for i in range(5):
            assert pool(method, list(weights), probs[i].tolist(), 0.8) == pytest.approx(ours[i].tolist(), abs=1e-12)
    # log-linear by hand for one frame: weighted geometric mean, then the temperature
    z = np.exp((weights[:, None] * np.log(probs[0])).sum(axis=0) / 0.8)
    assert pool("log_linear_pool", list(weights), probs[0].tolist(), 0.8) == pytest.approx((z / z.sum()).tolist())


def test_combine_answers_refers_and_renormalises_missing_members() -> None:
    ens = Ensemble.from_dict(_doc())
    pre = np.tile([0.02, 0.03, 0.9, 0.05], (4, 1))
    a = ens.combine(_answers(pre))
    assert a is not None and a.label == "Pre" and a.class_index == 2 and a.complete and a.abstain_reason is None
    # one missing: the same as pooling the other three with their weights renormalised
    rng = np.random.default_rng(1)
    rows = rng.dirichlet(np.ones(4) * 0.5, size=4)
    answers = _answers(rows)
    del answers[MEMBERS[0]]
    got = ens.combine(answers)
    assert got is not None and got.members_missing == (MEMBERS[0],) and not got.complete
    expect = pool("log_linear_pool", [0.3 / 0.6, 0.2 / 0.6, 0.1 / 0.6], rows[1:].tolist(), 0.8)
    assert [got.probabilities[c] for c in CLASS_NAMES] == pytest.approx(expect)
    # another version than the fitted one is missing too; under min_members there is no answer
    other = _answers(rows)
    other[MEMBERS[1]] = ("9.9", other[MEMBERS[1]][1])
    del other[MEMBERS[0]]
    assert ens.combine(other) is None
    # low confidence and an unconfirmed Benign are referrals with their reason
    low = ens.combine(_answers(np.tile([0.3, 0.3, 0.2, 0.2], (4, 1))))
    assert low is not None and low.label is None and low.abstained and low.abstain_reason == "low_confidence"
    ben = ens.combine(_answers(np.tile([0.85, 0.07, 0.05, 0.03], (4, 1))))
    assert ben is not None and ben.label is None and ben.abstain_reason == "benign_not_confirmed"
    assert ben.probabilities["Benign"] > 0.6  # confident enough, but not above the Benign threshold
    sure = ens.combine(_answers(np.tile([0.99, 0.005, 0.003, 0.002], (4, 1))))
    assert (
        sure is not None
        and sure.label == "Benign"
        and sure.malignant_probability == pytest.approx(1 - sure.probabilities["Benign"])
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"method": "vote"},
        {"temperature": 0},
        {"abstain_threshold": 1.5},
        {"benign_threshold": -0.1},
        {"min_members": 5},
        {"members": []},
        {"members": [{"name": "x", "version": "1", "weight": -1}]},
        {"schema_version": 2},
    ],
)
def test_invalid_parameters_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(EnsembleError):
        Ensemble.from_dict(_doc(**bad))
    with pytest.raises(EnsembleError):
        Ensemble.from_dict({k: v for k, v in _doc().items() if k != "temperature"})


def test_log_linear_fit_weights_the_informative_member() -> None:
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 4, n)
    good = np.full((n, 4), 0.1)
    good[np.arange(n), labels] = 0.7  # right 100%, confidence 0.7
    noise = rng.dirichlet(np.ones(4), size=n)  # uninformative
    weights, t = _fit_log_linear(np.stack([good, noise], axis=1), labels)
    assert weights.sum() == pytest.approx(1.0) and weights[0] > 0.9 and t < 1.0  # sharpened: always right
    for name in COMBINERS:
        fit = fit_combiner(name, np.stack([good, noise], axis=1), labels, [str(i // 20) for i in range(n)], [1.0, 1.0])
        logits = np.log(np.concatenate([good, noise], axis=1))
        # a fitted combiner ignores the noise; equal weights are pulled down by it
        assert (fit(logits).argmax(axis=1) == labels).mean() > (0.98 if COMBINERS[name][1] else 0.7), name


# -- the committed parameters -----------------------------------------------------------------------
def test_committed_ensemble_matches_the_registry_and_the_cards() -> None:
    doc = json.loads(ENSEMBLE_FILE.read_text())
    ens = Ensemble.from_dict(doc)
    assert [m.name for m in ens.members] == MEMBERS  # every frame model, in registry order
    assert ens.classes == CLASS_NAMES
    for m in ens.members:
        card = json.loads((REPO / "model_store" / f"{m.name}.card.json").read_text())
        assert m.version == card["version"], f"{m.name}: ensemble fitted on {m.version}, card is {card['version']}"
        assert 0.0 <= card["benign_threshold"] <= 1.0
    assert sum(m.weight for m in ens.members) == pytest.approx(1.0, abs=1e-5)
    assert ens.benign_threshold is not None and ens.min_members <= len(ens.members)
    m = doc["metrics"]
    assert m["ensemble"]["macro_f1"] == max(c["macro_f1"] for c in m["combiners"].values())
    assert set(m["missing_member"]) == set(MEMBERS)
    assert all(math.isfinite(m["ensemble"]["after"]["sensitivity"]["ci95"][i]) for i in (0, 1))


def test_random_deals_keep_blocks_whole_and_every_class_in_each_fold() -> None:
    labels = np.repeat([0, 1, 2, 3, 0, 1, 2, 3, 1, 2], 10)
    blocks = [f"b{i // 10}" for i in range(len(labels))]
    assert block_folds(labels, blocks, 2, seed=None).tolist() == block_folds(labels, blocks, 2).tolist()
    seen = set()
    for seed in range(12):
        fold = block_folds(labels, blocks, 2, seed=seed)
        for b in set(blocks):
            assert len(set(fold[np.array(blocks) == b])) == 1  # a block never straddles two folds
        for k in (0, 1):
            assert set(labels[fold == k]) == {0, 1, 2, 3}  # every class in each fold
        seen.add(tuple(fold))
    assert len(seen) > 1  # the seeds deal differently


def test_macro_f1_over_deals_measures_the_fitted_combiner_out_of_fold() -> None:
    rng = np.random.default_rng(1)
    n = 240
    labels = np.repeat(np.arange(4), n // 4)
    blocks = [f"{labels[i]}-{i // 20}" for i in range(n)]
    good = np.log(np.full((n, 4), 0.2) + 0.2 * np.eye(4)[labels])  # always right
    noise = np.log(rng.dirichlet(np.ones(4), size=n))
    names = ["good", "noise"]
    outputs = MemberOutputs(labels, blocks, [str(i) for i in range(n)], {"good": good, "noise": noise}, {}, {})
    d = macro_f1_over_deals(outputs, "log_linear_fitted", names, deals=4)
    assert (d["deals"], d["folds"]) == (4, 2) and d["min"] <= d["mean"] <= d["max"]
    assert d["min"] > 0.98  # the fit finds the informative member on every deal
    assert macro_f1_over_deals(outputs, "log_linear_fitted", ["noise"], deals=4)["mean"] < 0.5  # noise alone: chance
