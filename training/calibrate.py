"""Classification metrics, calibration (temperature scaling, ECE) and the abstention threshold.

Plain functions on numpy arrays (logits or probabilities, integer labels); unit-tested on known
inputs in tests/training/test_metrics.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "softmax",
    "confusion_matrix",
    "per_class_prf",
    "classification_metrics",
    "reliability_bins",
    "expected_calibration_error",
    "fit_temperature",
    "abstention_threshold",
    "block_folds",
    "cross_fitted_calibration",
]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confusion_matrix(labels: Sequence[int] | np.ndarray, preds: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Rows = true class, columns = predicted class."""
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm


def per_class_prf(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class (0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    pred_tot = cm.sum(axis=0).astype(np.float64)
    true_tot = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, pred_tot, out=np.zeros_like(tp), where=pred_tot > 0)
    recall = np.divide(tp, true_tot, out=np.zeros_like(tp), where=true_tot > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": true_tot}


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> list[dict[str, float]]:
    """Equal-width confidence bins: count, mean confidence and accuracy of the top-1 prediction."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out = []
    for i in range(n_bins):
        lo, hi = edges[i], edges[i + 1]
        mask = (conf > lo) & (conf <= hi) if i else (conf >= lo) & (conf <= hi)
        n = int(mask.sum())
        out.append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "count": n,
                "confidence": float(conf[mask].mean()) if n else 0.0,
                "accuracy": float(correct[mask].mean()) if n else 0.0,
            }
        )
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE: sum over bins of |accuracy - confidence| weighted by the bin's share of samples."""
    total = len(labels)
    return float(
        sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in reliability_bins(probs, labels, n_bins))
    )


def classification_metrics(
    logits_or_probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    temperature: float = 1.0,
    are_probs: bool = False,
) -> dict[str, Any]:
    probs = np.asarray(logits_or_probs, dtype=np.float64) if are_probs else softmax(logits_or_probs, temperature)
    labels = np.asarray(labels)
    preds = probs.argmax(axis=1)
    cm = confusion_matrix(labels, preds, len(classes))
    prf = per_class_prf(cm)
    return {
        "n": int(len(labels)),
        "accuracy": round(float((preds == labels).mean()), 4),
        "macro_f1": round(float(prf["f1"].mean()), 4),
        "per_class": {
            c: {k: round(float(prf[k][i]), 4) for k in ("precision", "recall", "f1")}
            | {"support": int(prf["support"][i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
        "ece": round(expected_calibration_error(probs, labels), 4),
    }


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) (1-D search on log T)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)

    def nll(log_t: float) -> float:
        p = softmax(logits, float(np.exp(log_t)))
        return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean())

    grid = np.linspace(np.log(0.05), np.log(20.0), 200)
    best = float(grid[int(np.argmin([nll(g) for g in grid]))])
    lo, hi = best - 0.05, best + 0.05
    for _ in range(60):  # golden-section refinement
        m1, m2 = lo + (hi - lo) * 0.382, lo + (hi - lo) * 0.618
        if nll(m1) < nll(m2):
            hi = m2
        else:
            lo = m1
    return float(np.exp((lo + hi) / 2))


def abstention_threshold(probs: np.ndarray, labels: np.ndarray, target_accuracy: float = 0.98) -> dict[str, float]:
    """Lowest confidence threshold t such that predictions with confidence >= t are at least
    ``target_accuracy`` accurate (maximum coverage); below t the model abstains."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    best: float | None = None
    for t in np.unique(conf):  # ascending: the first that meets the target has the largest coverage
        accepted = conf >= t
        if correct[accepted].mean() >= target_accuracy:
            best = float(t)
            break
    if best is None:
        return {"threshold": 1.0, "coverage": 0.0, "accepted_accuracy": float("nan")}
    accepted = conf >= best
    return {
        "threshold": best,
        "coverage": round(float(accepted.mean()), 4),
        "accepted_accuracy": round(float(correct[accepted].mean()), 4),
    }


def block_folds(
    labels: Sequence[int] | np.ndarray, groups: Sequence[str], folds: int = 2, seed: int | None = None
) -> np.ndarray:
    """The fold (0..folds-1) of every sample: its validation block's, blocks dealt class by class.

    Blocks are sorted by their majority class, then name, and dealt round-robin, so each fold sees
    every class and a block never straddles two folds. Every cross-fitted estimate uses these folds.
    With ``seed``, the blocks of each majority class are shuffled before the deal (one of many equally
    valid deals: how much an estimate owes to the fixed one).
    """
    labels = np.asarray(labels)
    group_arr = np.asarray(groups)
    names = np.unique(group_arr)
    majority = {g: int(np.bincount(labels[group_arr == g]).argmax()) for g in names}
    rank = {g: i for i, g in enumerate(names)}
    if seed is not None:
        rank = {g: int(i) for g, i in zip(names, np.random.default_rng(seed).permutation(len(names)), strict=True)}
    ordered = sorted(names, key=lambda g: (majority[g], rank[g]))
    fold_of = {g: i % folds for i, g in enumerate(ordered)}
    return np.array([fold_of[g] for g in group_arr])


def cross_fitted_calibration(
    logits: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    folds: int = 2,
    target_accuracy: float = 0.98,
) -> dict[str, Any]:
    """What temperature scaling and the abstention threshold deliver on blocks they were not fitted on.

    The validation blocks (``groups``) are dealt into ``folds`` folds, class by class (blocks sorted by
    their majority class, then name, dealt round-robin), so each fold sees every class. For each fold,
    T and the threshold are fitted on the other folds and applied to it; the out-of-fold calibrated
    probabilities and accept decisions are pooled into ECE, coverage and accepted accuracy. The
    shipped T and threshold are fitted on all blocks; this is the honest estimate of how they carry over.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    fold = block_folds(labels, groups, folds)
    probs = np.zeros_like(logits)
    accepted = np.zeros(len(labels), dtype=bool)
    temperatures, thresholds = [], []
    for k in range(folds):
        fit, apply = fold != k, fold == k
        t = fit_temperature(logits[fit], labels[fit])
        thr = abstention_threshold(softmax(logits[fit], t), labels[fit], target_accuracy)["threshold"]
        probs[apply] = softmax(logits[apply], t)
        accepted[apply] = probs[apply].max(axis=1) >= thr
        temperatures.append(round(t, 4))
        thresholds.append(round(float(thr), 4))
    correct = probs.argmax(axis=1) == labels
    return {
        "folds": folds,
        "temperatures": temperatures,
        "thresholds": thresholds,
        "ece_after": round(expected_calibration_error(probs, labels), 4),
        "coverage": round(float(accepted.mean()), 4),
        "accepted_accuracy": round(float(correct[accepted].mean()), 4) if accepted.any() else float("nan"),
    }
