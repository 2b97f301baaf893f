"""The out-of-distribution score (core.ood): its arithmetic, its card block, and the served runtime abstaining
``out_of_distribution`` with the score and threshold in ``quality`` (shipped weights, a real BCCD frame)."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.card import CardError, validate_card
from core.ood import OODError, OODScorer
from core.paths import BCCD, REPO
from core.prediction import ABSTAIN_MESSAGES, OUT_OF_DISTRIBUTION, build_prediction
from core.registry import CLASS_NAMES, model_names
from tests.handlers.inputs import smear_bytes

RNG = np.random.default_rng(0)


def _fitted(k: int | None = None, residual: bool = False) -> tuple[OODScorer, np.ndarray, np.ndarray]:
    """A Mahalanobis score fitted (as training.ood does) on random features of two classes; the data."""
    from training.ood import mahalanobis_candidate

    x = RNG.normal(size=(400, 6)) @ RNG.normal(size=(6, 6))
    y = (np.arange(400) % 2).astype(np.int64)
    x[y == 1] += 3.0
    cand = mahalanobis_candidate(x, y, k, residual, "test")
    assert cand.scorer is not None
    return cand.scorer, x, y


def test_mahalanobis_is_the_smallest_distance_to_a_class_mean_under_the_tied_covariance() -> None:
    scorer, x, y = _fitted()
    means = np.asarray(scorer.means)
    w = np.asarray(scorer.whitening)
    precision = w @ w.T  # all directions kept: W W^T is the inverse of the (shrunk) covariance
    q = RNG.normal(size=(5, 6)) * 4
    expected = np.min([np.einsum("ij,jk,ik->i", q - m, precision, q - m) for m in means], axis=0)
    assert scorer.scores(q, None) == pytest.approx(expected, rel=1e-5)
    # farther from the training frames is a larger score
    assert scorer.score(x[y == 0].mean(axis=0), None) < scorer.score(x[y == 0].mean(axis=0) + 50.0, None)


def test_the_residual_counts_what_the_leading_directions_leave_out() -> None:
    scorer, _, _ = _fitted(k=3, residual=True)
    means, w = np.asarray(scorer.means), np.asarray(scorer.whitening)
    basis = w / np.linalg.norm(w, axis=0)
    q = RNG.normal(size=(4, 6)) * 3
    parts = []
    for m in means:
        d = q - m
        inside = d @ basis @ basis.T
        parts.append(((d @ w) ** 2).sum(axis=1) + ((d - inside) ** 2).sum(axis=1) / scorer.residual_scale)
    assert scorer.scores(q, None) == pytest.approx(np.min(parts, axis=0), rel=1e-6)


def test_energy_and_the_combined_score_with_image_statistics() -> None:
    logits = np.array([[2.0, 0.0, -1.0, 0.5], [10.0, 9.0, 0.0, 0.0]])
    energy = OODScorer(method="energy", threshold=-3.0)
    lse = np.log(np.exp(logits).sum(axis=1))
    assert energy.scores(None, logits) == pytest.approx(-lse)
    image = {"mean": [0.0, 0.0], "whitening": [[1.0, 0.0], [0.0, 0.5]], "scale": 2.0}
    both = OODScorer(method="energy", threshold=1.0, feature_scale=4.0, image=image)
    stats = np.array([[0.0, 0.0], [4.0, 2.0]])
    expected = np.maximum(-lse / 4.0, np.array([0.0, 16.0 + 1.0]) / 2.0)
    assert both.scores(None, logits, stats) == pytest.approx(expected)
    with pytest.raises(OODError, match="image statistics"):
        both.scores(None, logits)
    beyond, fields = both.evaluate(None, logits[1:], stats[1:])
    assert beyond and fields["ood_method"] == "energy+image_statistics" and fields["in_distribution"] is False
    assert fields["ood_score"] == pytest.approx(8.5) and fields["ood_threshold"] == 1.0
    assert not both.evaluate(None, logits[:1], stats[:1])[0]


def test_the_card_block_round_trips_and_bad_blocks_are_refused() -> None:
    scorer, _, _ = _fitted(k=3, residual=True)
    scorer.threshold = 12.5
    d = json.loads(json.dumps(scorer.to_dict()))
    again = OODScorer.from_dict(d)
    q = RNG.normal(size=(3, 6))
    assert again.scores(q, None) == pytest.approx(scorer.scores(q, None)) and again.threshold == 12.5
    bad: list[dict[str, Any]] = [
        d | {"kind": "other"},
        d | {"method": "magic"},
        d | {"threshold": float("nan")},
        d | {"whitening": [[1.0, 2.0]]},  # 1 x 2 for features of 6
        d | {"residual_scale": 0.0},
        d | {"image": {"mean": [0.0], "whitening": [[1.0]], "scale": 1.0}},  # no feature_scale
    ]
    for b in bad:
        with pytest.raises(OODError):
            OODScorer.from_dict(b)
    card = json.loads((REPO / "model_store" / "mobilenetv3_lstm.card.json").read_text())
    with pytest.raises(CardError, match="ood"):
        validate_card(card | {"ood": bad[1]})
    with pytest.raises(OODError, match="features of 5"):
        scorer.scores(np.zeros((1, 5)), None)


def test_an_out_of_distribution_answer_abstains_with_its_reason_whatever_the_probabilities() -> None:
    common: dict[str, Any] = {"classes": CLASS_NAMES, "model": "m", "version": "1", "abstain_threshold": 0.5}
    sure = [0.01, 0.97, 0.01, 0.01]
    assert build_prediction(sure, **common)["label"] == "Early"
    body = build_prediction(sure, **common, out_of_distribution=True)
    assert (body["label"], body["class_index"], body["abstained"], body["abstain_reason"]) == (
        None,
        None,
        True,
        OUT_OF_DISTRIBUTION,
    )
    assert body["message"] == ABSTAIN_MESSAGES[OUT_OF_DISTRIBUTION] and body["probabilities"]["Early"] == 0.97


# -- the shipped models ----------------------------------------------------------------------------------------
def test_every_shipped_frame_model_carries_a_fitted_score() -> None:
    for name in model_names():
        card = json.loads((REPO / "model_store" / f"{name}.card.json").read_text())
        scorer = OODScorer.from_dict(card["ood"])
        info = scorer.info
        assert info["validation"]["kept"] >= 0.97, name  # the threshold keeps >= 97% of same-source frames
        assert {"bccd", "pbc_cells", "all4_val"} <= set(info["sources"]) and "command" in info
        with zipfile.ZipFile(REPO / "model_store" / f"{name}.mar") as z:
            assert json.loads(z.read("model_card.json"))["ood"] == card["ood"], f"{name}.mar: make repack"


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped mobilenetv3_lstm archive's model directory, as TorchServe unpacks it."""
    out = tmp_path_factory.mktemp("shipped")
    with zipfile.ZipFile(REPO / "model_store" / "mobilenetv3_lstm.mar") as z:
        z.extractall(out, [n for n in z.namelist() if n.startswith("model/") or n == "model_card.json"])
    return out


def _runtime(model_dir: Path) -> Any:
    from handlers.runtime import ModelRuntime

    return ModelRuntime(model_dir)


def _bccd_frame() -> bytes:
    return sorted((BCCD / "JPEGImages").glob("*.jpg"))[0].read_bytes()


def test_the_runtime_reports_the_score_and_abstains_beyond_the_threshold(shipped: Path, tmp_path: Path) -> None:
    runtime = _runtime(shipped)
    assert runtime.ood is not None
    rows = [{"body": smear_bytes("Pre")}, {"body": _bccd_frame()}]
    bodies = runtime.predict(rows)
    scores = []
    for body in bodies:
        assert isinstance(body, dict)
        q = body["quality"]
        assert q["ood_threshold"] == pytest.approx(runtime.ood.threshold, abs=1e-5) and q["ood_method"]
        assert q["in_distribution"] is (q["ood_score"] <= q["ood_threshold"])
        assert (body["abstain_reason"] == OUT_OF_DISTRIBUTION) is (not q["in_distribution"])
        scores.append(q["ood_score"])
    # the same score as the scorer computes from the runtime's own features and the gate's statistics
    prepared = runtime.prepare(rows[1])
    logits, pooled = runtime.forward(prepared.tensor.unsqueeze(0))
    stats = runtime.gate.statistics(prepared.decoded.image)
    assert runtime.ood.score(pooled[0], logits[0], stats) == pytest.approx(scores[1], rel=1e-4, abs=1e-4)
    # a threshold under this frame's score: the same frame is answered out_of_distribution, not labelled
    card = json.loads((shipped / "model_card.json").read_text())
    lowered = copy.deepcopy(card)
    lowered["ood"]["threshold"] = min(scores) / 2
    moved = tmp_path / "lowered"
    (moved / "model").mkdir(parents=True)
    for f in (shipped / "model").iterdir():
        (moved / "model" / f.name).symlink_to(f)
    (moved / "model_card.json").write_text(json.dumps(lowered))
    for body in _runtime(moved).predict(rows):
        assert isinstance(body, dict)
        assert (body["label"], body["abstained"], body["abstain_reason"]) == (None, True, OUT_OF_DISTRIBUTION)
        assert body["message"] == ABSTAIN_MESSAGES[OUT_OF_DISTRIBUTION] and not body["quality"]["in_distribution"]


def test_the_consensus_report_measures_each_variant_of_the_rules() -> None:
    """training.ood's consensus table: the rules now, rule 5 on answers only, and both without the score."""
    from training.ood import _consensus_outcomes

    cards = {m: json.loads((REPO / "model_store" / f"{m}.card.json").read_text()) for m in model_names()}
    for card in cards.values():
        card["temperature"] = 1.0
    early = CLASS_NAMES.index("Early")
    logits = np.zeros((2, len(CLASS_NAMES)))
    logits[:, early] = 10.0  # every model finds both images Early beyond doubt
    answered, unsure, ood = ("all", early), ("abstained", None), ("ood", None)
    # image 0: two answer Early, two abstain; image 1: the same, but the first model's score flags it
    rows: dict[str, dict[str, list[Any]]] = {
        m: {"before": [a, a], "after": [a, ood if k == 0 else a]}
        for k, (m, a) in enumerate(zip(cards, (answered, answered, unsure, unsure), strict=True))
    }
    per_image = {m: {"s": {"ids": ["a", "b"], "logits": logits, **rows[m]}} for m in cards}
    got = _consensus_outcomes(cards, per_image, "s")
    assert got["n"] == 2 and got["labels"]["after"] == [early, -1] and got["labels"]["answers_only"] == [-1, -1]
    assert got["after"] == {"all": 0.5, "refer: out_of_distribution": 0.5}
    assert got["variants"]["answers_only"] == {"refer: no_majority": 0.5, "refer: out_of_distribution": 0.5}
    assert got["variants"]["no_ood"] == {"all": 1.0}
    assert got["variants"]["no_ood_answers_only"] == {"refer: no_majority": 1.0}
