"""Out-of-distribution score of a frame model on its own features: "is this image like anything learned?".

The smear gate (:mod:`served_model.smear_gate`) asks whether an image is a blood smear at all; a smear from another
lab, stain, camera or magnification passes it, and there a model's probabilities mean little (the models
answered ALL on most normal frames of another lab). So each model also measures how far the image's
pooled (penultimate) features lie from the features of its training frames, and abstains with
``out_of_distribution`` beyond a threshold.

Scores (larger = farther from the training frames); which one a model uses, and why, is in its card
(``ood.info``, measured by :mod:`training.ood` on same-source validation frames and on other sources):

- ``mahalanobis``: the smallest Mahalanobis distance (squared) to the class means of the training
  features under their shared (tied) covariance, the covariance shrunk towards its mean eigenvalue and
  restricted to its leading ``k`` principal directions (stored as the whitening matrix ``W``, D x k:
  ``d_c = ||(x - mu_c) W||^2``) plus, when ``residual_scale`` is set, the squared norm of the part of
  ``x - mu_c`` outside those directions divided by it (the variance the training frames left there).
- ``energy``: ``-logsumexp(logits)`` (Liu et al. 2020), on the model's raw logits.

Optionally (``image``) the score also reads the image statistics the smear gate computes anyway
(:func:`served_model.smear_gate.image_statistics`: luminance, colour, object sizes and counts, spatial frequencies):
their Mahalanobis distance to the training frames' statistics (full covariance, Ledoit-Wolf shrunk). The
score is then ``max(feature score / feature_scale, image score / image.scale)``: beyond the threshold when
either part is far. A model's features alone can map a frame from elsewhere confidently into a leukemia
cluster (measured: the frames the models answered ALL on other sources were rarely far in their features);
what the camera and magnification did to the image is seen in its statistics.

The threshold is fitted so that a fixed share of the same-source validation frames (at least 97%) stays
within it. Everything fitted is plain numbers (card JSON); scoring needs NumPy alone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["KIND", "METHODS", "OODError", "OODScorer"]

KIND = "ood_feature_score"
METHODS = ("mahalanobis", "energy")


class OODError(ValueError):
    """The card's ``ood`` block is missing a field or has a wrong value."""


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float64)


@dataclass
class OODScorer:
    """A fitted out-of-distribution score and its threshold (card-serialisable)."""

    method: str
    threshold: float
    #: mahalanobis: class means (C x D), whitening matrix (D x k), optional residual variance
    means: list[list[float]] | None = None
    whitening: list[list[float]] | None = None
    residual_scale: float | None = None
    #: with ``image``: the divisor of the feature score in the combined score
    feature_scale: float | None = None
    #: Mahalanobis on the smear gate's image statistics: mean (S), whitening (S x S), scale (its divisor)
    image: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise OODError(f"unknown out-of-distribution method {self.method!r}")
        if not math.isfinite(float(self.threshold)):
            raise OODError("the out-of-distribution threshold must be finite")
        if self.method == "mahalanobis":
            if self.means is None or self.whitening is None:
                raise OODError("a mahalanobis score needs means and whitening")
            means, w = np.asarray(self.means), np.asarray(self.whitening)
            if means.ndim != 2 or w.ndim != 2 or means.shape[1] != w.shape[0] or not means.size or not w.size:
                raise OODError(f"means {means.shape} and whitening {w.shape} do not fit (C x D and D x k)")
            if self.residual_scale is not None and not float(self.residual_scale) > 0:
                raise OODError("residual_scale must be positive")
        if self.image is not None:
            mean, w = np.asarray(self.image.get("mean")), np.asarray(self.image.get("whitening"))
            if mean.ndim != 1 or w.shape != (len(mean), len(mean)):
                raise OODError(f"image statistics mean {mean.shape} and whitening {w.shape} do not fit (S and S x S)")
            scale = self.image.get("scale")
            if not (isinstance(scale, int | float) and scale > 0) or not (
                self.feature_scale is not None and self.feature_scale > 0
            ):
                raise OODError("a score with image statistics needs positive image.scale and feature_scale")

    @functools.cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(means, whitening, the orthonormal basis of the whitened directions (for the residual) or None)."""
        means = np.asarray(self.means, dtype=np.float64)
        w = np.asarray(self.whitening, dtype=np.float64)
        basis = None
        if self.residual_scale is not None:
            basis = w / np.linalg.norm(w, axis=0, keepdims=True)  # W's columns are orthogonal: scaled eigenvectors
        return means, w, basis

    @property
    def dim(self) -> int | None:
        """The feature dimension the score expects (None: it reads the logits)."""
        return None if self.means is None else len(self.means[0])

    @property
    def uses_statistics(self) -> bool:
        """Whether the score reads the smear gate's image statistics."""
        return self.image is not None

    def feature_scores(self, pooled: Any, logits: Any) -> np.ndarray:
        """The feature part of the score of each row of ``pooled`` (B x D) / ``logits`` (B x K)."""
        if self.method == "energy":
            z = np.atleast_2d(_as_array(logits))
            top = z.max(axis=1)
            return -(top + np.log(np.exp(z - top[:, None]).sum(axis=1)))
        means, w, basis = self._arrays
        x = np.atleast_2d(_as_array(pooled))
        if x.shape[1] != means.shape[1]:
            raise OODError(f"features of {x.shape[1]} values for a score fitted on {means.shape[1]}")
        best = np.full(x.shape[0], np.inf)
        for mu in means:
            d = x - mu
            s = ((d @ w) ** 2).sum(axis=1)
            if basis is not None and self.residual_scale is not None:
                inside = (d @ basis) @ basis.T
                s = s + ((d - inside) ** 2).sum(axis=1) / float(self.residual_scale)
            best = np.minimum(best, s)
        return best

    def image_scores(self, statistics: Any) -> np.ndarray:
        """The image-statistics part (Mahalanobis, squared) of each row of ``statistics``."""
        assert self.image is not None
        d = np.atleast_2d(_as_array(statistics)) - np.asarray(self.image["mean"], dtype=np.float64)
        return ((d @ np.asarray(self.image["whitening"], dtype=np.float64)) ** 2).sum(axis=1)

    def scores(self, pooled: Any, logits: Any, statistics: Any = None) -> np.ndarray:
        """The score of each row (``statistics``: the smear gate's image statistics, needed when
        :attr:`uses_statistics`)."""
        f = self.feature_scores(pooled, logits)
        if self.image is None:
            return f
        if statistics is None:
            raise OODError("this score needs the image statistics of the smear gate")
        assert self.feature_scale is not None
        return np.maximum(f / float(self.feature_scale), self.image_scores(statistics) / float(self.image["scale"]))

    def score(self, pooled: Any, logits: Any, statistics: Any = None) -> float:
        return float(self.scores(pooled, logits, statistics)[0])

    def evaluate(self, pooled: Any, logits: Any, statistics: Any = None) -> tuple[bool, dict[str, Any]]:
        """(whether the image is out of distribution, the fields the answer's ``quality`` block gets)."""
        s = self.score(pooled, logits, statistics)
        beyond = not s <= self.threshold  # NaN counts as beyond
        return beyond, {
            "ood_method": self.method + ("+image_statistics" if self.image is not None else ""),
            "ood_score": round(s, 5) if math.isfinite(s) else None,
            "ood_threshold": round(float(self.threshold), 5),
            "in_distribution": not beyond,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "method": self.method,
            "threshold": float(self.threshold),
            "means": self.means,
            "whitening": self.whitening,
            "residual_scale": self.residual_scale,
            "feature_scale": self.feature_scale,
            "image": self.image,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OODScorer:
        if d.get("kind") != KIND:
            raise OODError(f"unknown out-of-distribution score kind {d.get('kind')!r}")
        try:
            residual = d.get("residual_scale")
            feature_scale = d.get("feature_scale")
            return cls(
                method=str(d["method"]),
                threshold=float(d["threshold"]),
                means=d.get("means"),
                whitening=d.get("whitening"),
                residual_scale=None if residual is None else float(residual),
                feature_scale=None if feature_scale is None else float(feature_scale),
                image=d.get("image"),
                info=dict(d.get("info", {})),
            )
        except (KeyError, TypeError) as exc:
            raise OODError(f"the out-of-distribution block lacks or mistypes {exc}") from None
