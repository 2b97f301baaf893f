"""A retrained frame model's out-of-distribution score, refitted to its own features (:func:`refit_features`).

The score itself is fitted and chosen by :mod:`training.ood` on the shipped versions; a candidate of the update
loop (:mod:`model_update.retrain`) moves the pooled features it reads, and may not use the validation frames (the
locked test set) to set its scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from training.ood import KEEP, keep_threshold, mahalanobis_candidate

__all__ = ["refit_features"]


def _held_out_scale(x: np.ndarray, labels: np.ndarray, blocks: Sequence[str], k: int | None, residual: bool) -> float:
    """The :data:`KEEP` share of the training frames' scores, each scored by a fit on the other half of the blocks."""
    names = sorted(set(blocks))
    halves = [np.array([b in set(names[0::2]) for b in blocks]), np.array([b in set(names[1::2]) for b in blocks])]
    held_out = []
    for fit, apply in (halves, halves[::-1]):
        part = mahalanobis_candidate(x[fit], labels[fit], k, residual, "held_out")
        held_out.append(part.fn({"pooled": x[apply], "logits": np.zeros((int(apply.sum()), 1))}))
    return keep_threshold(np.concatenate(held_out))


def refit_features(
    ood: dict[str, Any],
    pooled: np.ndarray,
    labels: np.ndarray,
    blocks: Sequence[str],
    base_pooled: np.ndarray,
) -> dict[str, Any]:
    """``ood`` (the base version's card block) refitted to a retrained version's pooled features, without
    validation frames.

    A retrained sequence stage moves the pooled features, so the feature part of the kept score (its kind, read
    from ``info.score``: tied-covariance Mahalanobis, ``pcaK`` leading directions, ``_residual``) is fitted again
    on the training frames' features (``pooled``, ``labels``, their ``blocks``). Its scale (for a score without
    image statistics, its threshold) cannot come from the validation frames, which are the locked test set now,
    nor from the training frames as they are: a network places the frames it was trained on closer together than
    new ones (measured on xception_bigru 1.0: the 98% share of held-out-block training scores was 1511, of
    validation scores 3538). So the rule is the base version's own ratio: the base scale, fitted on validation,
    times (the new version's held-out-block share / the base version's, ``base_pooled``: its features of the same
    frames), each held-out share fitted on one half of the blocks and taken of the other. The image-statistics
    part, which no model changes, and the combined threshold stay as they were.
    """
    score = str(ood.get("info", {}).get("score", ""))
    feature = score.split("+")[0]
    if not feature.startswith("mahalanobis_tied"):
        raise ValueError(f"cannot refit the out-of-distribution score {score!r}")
    pca = [int(p[3:]) for p in feature.split("_") if p.startswith("pca")]
    k, residual = (pca[0] if pca else None), feature.endswith("_residual")
    x = np.asarray(pooled, dtype=np.float64)
    new = _held_out_scale(x, labels, blocks, k, residual)
    base = _held_out_scale(np.asarray(base_pooled, dtype=np.float64), labels, blocks, k, residual)
    image = bool(ood.get("image"))
    base_scale = float(ood["feature_scale"] if image else ood["threshold"])
    scale = base_scale * new / base
    fitted = mahalanobis_candidate(x, labels, k, residual, feature).scorer
    assert fitted is not None
    out = fitted.to_dict()
    if image:
        out |= {"feature_scale": scale, "image": ood["image"], "threshold": ood["threshold"]}
    else:
        out["threshold"] = scale
    info = dict(ood.get("info", {}))
    info["refitted"] = (
        f"features refitted on {len(x)} training frames of this version; scale {scale:.6g} = the base version's "
        f"{base_scale:.6g} x held-out-block shares {new:.6g} (this version) / {base:.6g} (base), "
        f"{len(set(blocks))} blocks, kept share {KEEP:.0%}; image part and threshold as before"
    )
    return out | {"info": info}
