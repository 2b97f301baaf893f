"""The Benign safety operating point and malignancy sensitivity, fitted and measured cross-fitted.

A malignant frame (Early, Pre or Pro B-ALL) answered Benign is the costliest error. The operating
point answers Benign only when ``P(Benign)`` is above ``benign_threshold``: the highest ``P(Benign)``
any malignant frame of the fitting blocks reached, and never below :data:`BENIGN_FLOOR`
(:func:`fit_benign_threshold`); otherwise the frame is referred (:func:`core.prediction.decide`, the
serving rule, applied here frame by frame).

:func:`cross_fitted_operating_point` measures it as the cards' calibration is measured: the validation
blocks dealt into folds (:func:`training.calibrate.block_folds`), temperature, abstention threshold and
Benign threshold fitted on the other folds and applied to each fold, the decisions pooled: how many
malignant frames are still answered Benign out of fold (before: the confidence rule alone; after: with
the Benign threshold), what it costs in coverage of the Benign frames, and the sensitivity for
malignancy with a 95% Wilson interval (:func:`wilson_interval`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from core.prediction import decide
from core.registry import BENIGN_INDEX, CLASS_NAMES
from training.calibrate import abstention_threshold, block_folds, fit_temperature, softmax

__all__ = [
    "BENIGN_FLOOR",
    "MARGIN",
    "THRESHOLD_WORDS",
    "threshold_words",
    "TARGET_ACCURACY",
    "wilson_interval",
    "fit_benign_threshold",
    "decisions",
    "operating_point_metrics",
    "cross_fitted_operating_point",
    "card_block",
    "member_operating_point",
]

#: the abstention threshold's target accuracy on accepted frames (as training.evaluate)
TARGET_ACCURACY = 0.98


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (scipy.stats.binomtest); (nan, nan) for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


#: added to the highest malignant P(Benign): the served probabilities (fp32 through the handler) may differ from the
#: evaluation's in the last digits, and the frame that set the threshold must stay under it
MARGIN = 1e-4


#: the least calibrated P(Benign) that may be answered Benign, whatever the fitting frames allow. The highest malignant
#: P(Benign) alone did not hold out of fold: one capture series (block Pre-009) reached 0.62 (xception_bigru) and
#: 0.74-0.86 (effnetb3_bigru) where the other fold's malignant frames stayed under 0.09 and 0.26, and an independent
#: evaluation saw xception_bigru call a Pro-B frame Benign at 0.92. Of the floors tried (0.8, 0.9, 0.95; 2 and 3
#: folds) 0.9 was the least with no malignant frame answered Benign out of fold for any model or the ensemble; 0.95
#: also refers that 0.92. Cost out of fold (2 folds): 9-16 of the 72 Benign frames referred per model, 5 for the
#: ensemble (model_store/ensemble.md). Chosen on these validation frames, so their zero is not an independent test.
BENIGN_FLOOR = 0.95


def fit_benign_threshold(
    probs: np.ndarray,
    labels: np.ndarray,
    benign_index: int = BENIGN_INDEX,
    margin: float = MARGIN,
    floor: float = BENIGN_FLOOR,
) -> float:
    """The highest P(Benign) of any malignant frame plus ``margin``, at least ``floor`` and at most 1: Benign is
    answered only above it, so no malignant frame of these blocks is answered Benign, nor any frame whose evidence
    for Benign is under the floor."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    malignant = labels != benign_index
    highest = float(probs[malignant, benign_index].max()) + margin if malignant.any() else 0.0
    return min(1.0, max(highest, floor))


def decisions(
    probs: np.ndarray,
    abstain_threshold: float,
    benign_threshold: float | None,
    classes: Sequence[str] = CLASS_NAMES,
) -> tuple[np.ndarray, list[str | None]]:
    """Per frame the answered class index (-1: referred) and the abstain reason, by the serving rule."""
    answers, reasons = [], []
    for row in np.asarray(probs, dtype=np.float64):
        idx, reason = decide(row, classes, abstain_threshold=abstain_threshold, benign_threshold=benign_threshold)
        answers.append(-1 if idx is None else idx)
        reasons.append(reason)
    return np.array(answers, dtype=np.int64), reasons


def operating_point_metrics(
    answers: np.ndarray, labels: np.ndarray, benign_index: int = BENIGN_INDEX
) -> dict[str, Any]:
    """Coverage, accepted accuracy, malignant frames answered Benign, Benign coverage and malignancy sensitivity.

    Sensitivity for malignancy counts a malignant frame as caught when it is not answered Benign (answered
    with a malignant class or referred: a referral goes to a reviewer); ``malignant_answered_malignant`` is
    the stricter share answered with a malignant class. Both with 95% Wilson intervals.
    """
    answers, labels = np.asarray(answers), np.asarray(labels)
    accepted = answers >= 0
    malignant = labels != benign_index
    benign = ~malignant
    n_mal, n_ben = int(malignant.sum()), int(benign.sum())
    mal_as_benign = int((malignant & (answers == benign_index)).sum())
    caught = n_mal - mal_as_benign
    answered_malignant = int((malignant & accepted & (answers != benign_index)).sum())
    sens_ci = wilson_interval(caught, n_mal)
    strict_ci = wilson_interval(answered_malignant, n_mal)
    return {
        "n": int(len(labels)),
        "coverage": round(float(accepted.mean()), 4),
        "accepted_accuracy": round(float((answers[accepted] == labels[accepted]).mean()), 4)
        if accepted.any()
        else float("nan"),
        "malignant_frames": n_mal,
        "malignant_answered_benign": mal_as_benign,
        "benign_frames": n_ben,
        "benign_answered_benign": int((benign & (answers == benign_index)).sum()),
        "benign_coverage": round(float((benign & accepted).sum() / n_ben), 4) if n_ben else float("nan"),
        "sensitivity": {
            "value": round(caught / n_mal, 4) if n_mal else float("nan"),
            "ci95": [round(sens_ci[0], 4), round(sens_ci[1], 4)],
            "method": "Wilson",
            "definition": "malignant (Early/Pre/Pro) frames not answered Benign (answered malignant or referred)",
        },
        "malignant_answered_malignant": {
            "value": round(answered_malignant / n_mal, 4) if n_mal else float("nan"),
            "ci95": [round(strict_ci[0], 4), round(strict_ci[1], 4)],
            "method": "Wilson",
        },
    }


#: fit(inputs of the fitting frames, their labels, their blocks) -> calibrator(rows) -> calibrated probabilities
Fitter = Callable[[np.ndarray, np.ndarray, Sequence[str]], Callable[[np.ndarray], np.ndarray]]


def temperature_fitter(
    logits: np.ndarray, labels: np.ndarray, groups: Sequence[str]
) -> Callable[[np.ndarray], np.ndarray]:
    """Temperature scaling (training.calibrate.fit_temperature) as a :data:`Fitter`."""
    t = fit_temperature(logits, labels)
    return lambda rows: softmax(rows, t)


def cross_fitted_operating_point(
    inputs: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    folds: int = 2,
    fitter: Fitter = temperature_fitter,
    target_accuracy: float = TARGET_ACCURACY,
    seed: int | None = None,
) -> dict[str, Any]:
    """Out-of-fold decisions before and after the Benign threshold, and the out-of-fold probabilities.

    For each fold the calibration (``fitter``: temperature scaling of a model's logits by default, or an
    ensemble's fit), the abstention threshold and the Benign threshold are fitted on the other folds'
    frames and applied to the fold. Returns the metrics ``before`` (confidence rule alone) and ``after``
    (with the Benign threshold), the per-fold thresholds, ``fold`` (each frame's), ``probs`` (out-of-fold)
    and ``calibrators`` (the fitted ones, per fold): the last three are arrays and objects, not JSON.
    ``seed``: one of the random deals of :func:`training.calibrate.block_folds` instead of the fixed one.
    """
    inputs, labels = np.asarray(inputs, dtype=np.float64), np.asarray(labels)
    group_arr = np.asarray(groups)
    fold = block_folds(labels, groups, folds, seed=seed)
    probs = np.zeros((len(labels), len(CLASS_NAMES)))
    before = np.zeros(len(labels), dtype=np.int64)
    after = np.zeros(len(labels), dtype=np.int64)
    per_fold, calibrators = [], []
    for k in range(folds):
        fit, apply = fold != k, fold == k
        calibrate = fitter(inputs[fit], labels[fit], [str(g) for g in group_arr[fit]])
        calibrators.append(calibrate)
        p_fit = calibrate(inputs[fit])
        thr = abstention_threshold(p_fit, labels[fit], target_accuracy)["threshold"]
        b_thr = fit_benign_threshold(p_fit, labels[fit])
        probs[apply] = calibrate(inputs[apply])
        before[apply] = decisions(probs[apply], thr, None)[0]
        after[apply] = decisions(probs[apply], thr, b_thr)[0]
        fold_labels = labels[apply]
        per_fold.append(
            {
                "abstain_threshold": round(float(thr), 4),
                "benign_threshold": round(float(b_thr), 6),
                "n": int(apply.sum()),
                "malignant_answered_benign_before": int(
                    ((fold_labels != BENIGN_INDEX) & (before[apply] == BENIGN_INDEX)).sum()
                ),
                "malignant_answered_benign_after": int(
                    ((fold_labels != BENIGN_INDEX) & (after[apply] == BENIGN_INDEX)).sum()
                ),
            }
        )
    return {
        "folds": folds,
        "per_fold": per_fold,
        "before": operating_point_metrics(before, labels),
        "after": operating_point_metrics(after, labels),
        "fold": fold,
        "probs": probs,
        "calibrators": calibrators,
    }


def threshold_words(frames: str = "validation frame") -> str:
    """How the threshold is set, in words, for the cards and documents (``frames``: the frames it is fitted on)."""
    return (
        f"the highest P(Benign) of any malignant (Early/Pre/Pro) {frames} (+{MARGIN:g}), and at least {BENIGN_FLOOR:g}"
    )


THRESHOLD_WORDS = threshold_words()
RULE = (
    f"Benign answered only when P(Benign) > threshold, {THRESHOLD_WORDS} (calibrated probabilities); otherwise "
    "referred (abstain_reason benign_not_confirmed)"
)


def card_block(threshold: float, cross: dict[str, Any], in_sample: dict[str, Any] | None = None) -> dict[str, Any]:
    """A card's ``metrics.benign_operating_point``: the shipped threshold (fitted on every validation block),
    the out-of-fold measurement (:func:`cross_fitted_operating_point`, JSON part only) and, when given, the
    shipped thresholds applied to the blocks they were fitted on (``in_sample``, optimistic)."""
    block = {
        "threshold": float(threshold),
        "rule": RULE,
        "cross_fitted": {k: cross[k] for k in ("folds", "before", "after", "per_fold")},
    }
    if in_sample is not None:
        block["in_sample"] = in_sample
    return block


def member_operating_point(
    logits: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    temperature: float,
    abstain_threshold: float,
    folds: int = 2,
) -> tuple[float, dict[str, Any]]:
    """(benign_threshold, card block) of one model: the threshold fitted on every validation frame calibrated
    with the card's ``temperature``, measured out of fold and, at the card's thresholds, in sample."""
    probs = softmax(logits, temperature)
    threshold = fit_benign_threshold(probs, labels)
    in_sample = {
        "before": operating_point_metrics(decisions(probs, abstain_threshold, None)[0], labels),
        "after": operating_point_metrics(decisions(probs, abstain_threshold, threshold)[0], labels),
    }
    cross = cross_fitted_operating_point(logits, labels, groups, folds)
    return threshold, card_block(threshold, cross, in_sample)
