"""The Benign safety operating point: its fit, its cross-fitted measurement, and the Wilson interval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.registry import BENIGN_INDEX
from training.operating_point import (
    BENIGN_FLOOR,
    MARGIN,
    cross_fitted_operating_point,
    decisions,
    fit_benign_threshold,
    operating_point_metrics,
    wilson_interval,
)


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(95, 100), (411, 411), (0, 20), (1, 3)])
def test_wilson_interval_is_the_textbook_formula(k: int, n: int) -> None:
    lo, hi = wilson_interval(k, n)
    assert (lo, hi) == pytest.approx(_wilson(k, n), abs=1e-9)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_benign_threshold_is_the_highest_malignant_p_benign() -> None:
    probs = np.array(
        [
            [0.92, 0.02, 0.02, 0.04],  # Pro frame called Benign with 0.92: the costly error
            [0.10, 0.80, 0.05, 0.05],
            [0.95, 0.02, 0.02, 0.01],  # Benign
            [0.91, 0.03, 0.03, 0.03],  # Benign, under the malignant frame's P(Benign)
        ]
    )
    labels = np.array([3, 1, BENIGN_INDEX, BENIGN_INDEX])
    thr = fit_benign_threshold(probs, labels, floor=0.0)
    assert thr == pytest.approx(0.92 + MARGIN)
    before, _ = decisions(probs, 0.6, None)
    after, reasons = decisions(probs, 0.6, thr)
    assert before.tolist() == [BENIGN_INDEX, 1, BENIGN_INDEX, BENIGN_INDEX]
    assert after.tolist() == [-1, 1, BENIGN_INDEX, -1]  # the error and the weak Benign are referred
    assert reasons == ["benign_not_confirmed", None, None, "benign_not_confirmed"]
    m_before, m_after = operating_point_metrics(before, labels), operating_point_metrics(after, labels)
    assert m_before["malignant_answered_benign"] == 1 and m_after["malignant_answered_benign"] == 0
    assert m_before["benign_coverage"] == 1.0 and m_after["benign_coverage"] == 0.5
    assert m_after["sensitivity"]["value"] == 1.0 and m_before["sensitivity"]["value"] == 0.5
    assert fit_benign_threshold(probs[2:], labels[2:], floor=0.0) == 0.0  # no malignant frame: nothing to stay above


def test_benign_threshold_never_falls_under_the_floor() -> None:
    """A fitting fold whose malignant frames all look malignant (P(Benign) <= 0.3) still asks for strong evidence:
    the independent evaluation's Pro-B frame called Benign at 0.92 is referred."""
    probs = np.array([[0.3, 0.6, 0.05, 0.05], [0.05, 0.05, 0.1, 0.8], [0.99, 0.01, 0.0, 0.0]])
    labels = np.array([1, 3, BENIGN_INDEX])
    thr = fit_benign_threshold(probs, labels)
    assert thr == BENIGN_FLOOR == 0.95
    later = np.array([[0.92, 0.02, 0.02, 0.04], [0.97, 0.01, 0.01, 0.01]])  # a Pro frame; a Benign frame
    assert decisions(later, 0.5, thr)[0].tolist() == [-1, BENIGN_INDEX]
    assert decisions(later, 0.5, fit_benign_threshold(probs, labels, floor=0.0))[0].tolist() == [BENIGN_INDEX] * 2
    assert fit_benign_threshold(probs[2:], labels[2:]) == BENIGN_FLOOR  # no malignant frame: the floor alone
    high = np.array([[0.99995, 0.00005, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert fit_benign_threshold(high, np.array([2, BENIGN_INDEX])) == 1.0  # capped: then nothing is answered Benign


def _frame(label: int, p_benign: float) -> list[float]:
    rest = (1 - p_benign) / 3
    row = [rest] * 4
    row[BENIGN_INDEX] = p_benign
    if label != BENIGN_INDEX and p_benign < 0.5:
        row = [p_benign, 0.0, 0.0, 0.0]
        row[label] = 1 - p_benign
    return row


def test_cross_fitted_threshold_must_refuse_what_the_other_fold_taught() -> None:
    """Fold 0 (blocks b0, pA): a Pre frame with P(Benign) 0.97, so fold 1 must refuse its Benign frames at 0.96;
    fold 1 (blocks b1, pB): a Pro frame with P(Benign) 0.99 that fold 0's threshold (0.97) cannot catch."""
    rows, labels, blocks = [], [], []

    def add(block: str, label: int, p: float, n: int = 1) -> None:
        for _ in range(n):
            rows.append(_frame(label, p))
            labels.append(label)
            blocks.append(block)

    # blocks are dealt into folds round-robin by (majority class, name): b0, b1, pA (Pre), pB (Pro)
    # (enough correct frames that the abstention threshold, 98% accepted accuracy, accepts every frame)
    add("b0", BENIGN_INDEX, 0.995, 40)
    add("b1", BENIGN_INDEX, 0.96, 40)
    add("pA", 2, 0.97)
    add("pA", 2, 0.1, 59)
    add("pB", 3, 0.99)
    add("pB", 3, 0.1, 59)
    probs = np.log(np.clip(np.array(rows), 1e-12, None))  # "logits" whose softmax at T=1 is the rows

    def identity(x: np.ndarray, y: np.ndarray, g: object) -> object:
        return lambda r: np.exp(r) / np.exp(r).sum(axis=1, keepdims=True)

    res = cross_fitted_operating_point(probs, np.array(labels), blocks, folds=2, fitter=identity)  # type: ignore[arg-type]
    fold = res["fold"]
    assert set(fold[np.array(blocks) == "b0"]) == {0} and set(fold[np.array(blocks) == "b1"]) == {1}
    assert set(fold[np.array(blocks) == "pA"]) == {0} and set(fold[np.array(blocks) == "pB"]) == {1}
    thr = [f["benign_threshold"] for f in res["per_fold"]]
    assert thr == pytest.approx([0.99 + MARGIN, 0.97 + MARGIN], abs=1e-6)  # fold 0 fitted on fold 1's frames, and back
    # before: both malignant frames with a high P(Benign) are answered Benign; after: pA's 0.97 is not above fold 0's
    # 0.99 (referred), but pB's 0.99 is above fold 1's 0.97: still answered Benign out of fold, and reported
    assert res["before"]["malignant_answered_benign"] == 2
    assert res["after"]["malignant_answered_benign"] == 1
    assert res["per_fold"][1]["malignant_answered_benign_after"] == 1
    # the cost: fold 1's Benign frames (0.96) under the 0.97 learnt on fold 0 are all referred
    assert res["before"]["benign_coverage"] == 1.0 and res["after"]["benign_coverage"] == 0.5
    assert res["after"]["benign_answered_benign"] == 40
