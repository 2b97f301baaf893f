"""Metric, calibration and abstention functions on inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from training.calibrate import (
    abstention_threshold,
    classification_metrics,
    confusion_matrix,
    cross_fitted_calibration,
    expected_calibration_error,
    fit_temperature,
    per_class_prf,
    reliability_bins,
    softmax,
)


def test_confusion_and_prf() -> None:
    y = [0, 0, 1, 1, 2, 2]
    p = [0, 1, 1, 1, 2, 0]
    cm = confusion_matrix(y, p, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    prf = per_class_prf(cm)
    assert prf["precision"].tolist() == pytest.approx([0.5, 2 / 3, 1.0])
    assert prf["recall"].tolist() == pytest.approx([0.5, 1.0, 0.5])
    assert prf["f1"].tolist() == pytest.approx([0.5, 0.8, 2 / 3])
    probs = np.eye(3)[p]
    m = classification_metrics(probs, np.array(y), ["a", "b", "c"], are_probs=True)
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3, abs=1e-4)
    assert m["per_class"]["b"]["support"] == 2


def test_ece_known_values() -> None:
    # all predictions at confidence 0.9 but only half correct: ECE = |0.5 - 0.9| = 0.4
    probs = np.array([[0.9, 0.1]] * 4)
    labels = np.array([0, 0, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    bins = reliability_bins(probs, labels, 10)
    assert sum(b["count"] for b in bins) == 4
    # perfectly calibrated two bins
    probs = np.array([[1.0, 0.0]] * 3 + [[0.5, 0.5]] * 2)
    labels = np.array([0, 0, 0, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0)


def test_temperature_recovers_scaling() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 4)) * 2.0
    labels = np.array([rng.choice(4, p=p) for p in softmax(true_logits)])
    t = fit_temperature(true_logits * 3.0, labels)  # overconfident by 3x
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(softmax(true_logits * 3.0), labels)
    after = expected_calibration_error(softmax(true_logits * 3.0, t), labels)
    assert after < before


def test_abstention_threshold() -> None:
    conf = np.array([0.99, 0.98, 0.97, 0.9, 0.8, 0.7])
    correct = np.array([1, 1, 1, 1, 0, 1], dtype=bool)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.where(correct, 0, 1)
    r = abstention_threshold(probs, labels, target_accuracy=0.98)
    assert r["threshold"] == pytest.approx(0.9)
    assert r["coverage"] == pytest.approx(4 / 6, abs=1e-4)
    assert r["accepted_accuracy"] == 1.0
    r = abstention_threshold(probs, labels, target_accuracy=0.8)
    assert r["threshold"] == pytest.approx(0.7)  # 5/6 correct overall
    none = abstention_threshold(np.array([[0.9, 0.1]]), np.array([1]), 0.98)
    assert none["coverage"] == 0.0


def test_cross_fitted_calibration_fits_on_other_blocks() -> None:
    rng = np.random.default_rng(1)
    true_logits = rng.normal(size=(2000, 4)) * 2.0
    labels = np.array([rng.choice(4, p=p) for p in softmax(true_logits)])
    blocks = [f"b{i // 50:02d}" for i in range(2000)]  # 40 blocks of 50
    r = cross_fitted_calibration(true_logits * 3.0, labels, blocks, folds=2)
    assert r["folds"] == 2 and len(r["temperatures"]) == 2 and len(r["thresholds"]) == 2
    assert r["temperatures"] == pytest.approx([3.0, 3.0], rel=0.15)
    assert r["ece_after"] < expected_calibration_error(softmax(true_logits * 3.0), labels)
    assert 0.0 < r["coverage"] < 1.0
    assert r["accepted_accuracy"] >= 0.95
    # a fold's threshold comes from the other fold only: one block of confident errors in fold 0
    # raises fold 1's threshold and leaves fold 0's alone
    bad_logits, bad_labels = true_logits * 3.0, labels.copy()
    bad_block = [i for i, b in enumerate(blocks) if b == sorted(set(blocks))[0]]
    bad_labels[bad_block] = (bad_logits[bad_block].argmax(axis=1) + 1) % 4
    r_bad = cross_fitted_calibration(bad_logits, bad_labels, blocks, folds=2)
    assert r_bad == cross_fitted_calibration(bad_logits, bad_labels, blocks, folds=2)  # deterministic
    assert r_bad["thresholds"] != r["thresholds"]


def test_histogram_baseline_features() -> None:
    from PIL import Image

    from training.evaluate import histogram_features

    im = Image.new("RGB", (8, 8), (0, 128, 255))
    h = histogram_features(im)
    assert h.shape == (48,)
    assert h.reshape(3, 16).sum(axis=1) == pytest.approx([1.0, 1.0, 1.0])
    assert h[0] == 1.0 and h[16 + 8] == 1.0 and h[32 + 15] == 1.0
