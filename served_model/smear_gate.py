"""The smear gate's scorer: "is this image a stained peripheral blood smear field of view?".

The classifiers answer one of four classes for any input, so the handler first asks the gate and
refuses images that are not smears (photos, documents, noise, flat colour, other imaging).

How it decides: :func:`image_statistics` turns an image into a small vector of statistics that
describe a smear independent of its exact colours (luminance distribution and bright-background
fraction, chroma, gradient and Laplacian energies at two scales, colour quantisation, and the
prototype's colour-histogram correlation to the training distribution) and, for gates of version 2,
:data:`SHAPE_FEATURE_NAMES`: what the objects in the image are like (dark objects against an Otsu
threshold: how many, how alike in size, how box-filling, the largest one's share; the flat
background's fraction; the colour of the darkest against the brightest parts), how the luminance
power spreads over octave bands of spatial frequency and over orientations, how coherent the local
structure is (structure tensor), and the Laplacian-of-Gaussian energies at four scales. A logistic
regression on the standardised vector (fitted by :func:`training.smear_gate.fit_smear_gate`) gives
``score`` in [0, 1]; ``accepted = score >= threshold``. Version 1 gates damp the score of images far
from every training smear (largest z-score, "novelty"); version 2 gates instead hold a Gaussian
mixture of the smear images' statistics and refuse an image whose log-density is below the fitted
limit (its score is then pushed below the threshold): an image must look like a smear to the
classifier *and* lie where smears lie, which is what refuses kinds of image no fit has seen.

Optionally (``pooled_features`` given and the gate fitted with feature statistics) the distance of
the model's pooled features to the training distribution is reported in ``details`` as well.

Everything fitted is plain numbers: :meth:`SmearGate.to_dict` goes into the model card and
:meth:`SmearGate.from_dict` rebuilds the gate in the handler with NumPy alone.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from core.errors import RequestError
from served_model.gate_statistics import _BASE_FEATURE_NAMES, _HIST_BINS, FEATURE_NAMES, image_statistics

__all__ = ["GateResult", "SmearGate"]


@dataclass
class GateResult:
    score: float
    threshold: float
    accepted: bool
    details: dict[str, Any] = field(default_factory=dict)


# -- the gate -----------------------------------------------------------------------------------
@dataclass
class SmearGate:
    """Logistic regression (and, version 2, a smear density) on :func:`image_statistics`; plain numbers
    only (card-serialisable)."""

    threshold: float
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    reference_hist: list[float]
    pos_mean: list[float] | None = None  # statistics of the smear images (novelty check)
    pos_scale: list[float] | None = None
    novelty_limit: float | None = None
    feature_mean: list[float] | None = None  # pooled-feature statistics (optional)
    feature_std: list[float] | None = None
    feature_distance_p99: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: the statistics the gate was fitted on: all of FEATURE_NAMES (version 2) or the first 17 (version 1)
    features: tuple[str, ...] = FEATURE_NAMES
    #: Gaussian mixture of the smear images' standardised statistics (version 2): weights, means,
    #: precisions_cholesky (sklearn's layout), log_density_limit
    density: dict[str, Any] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # a fitted value changed (training sets them one by one): drop the arrays made from the old ones
        object.__setattr__(self, name, value)
        self.__dict__.pop("_arrays", None)

    @functools.cached_property
    def _arrays(self) -> dict[str, Any]:
        """The fitted numbers as arrays, made once (the card holds lists; converting them per image cost
        about a tenth of the gate's time), and the mixture's per-component constants."""
        arr: dict[str, Any] = {
            key: None if getattr(self, key) is None else np.asarray(getattr(self, key), dtype=np.float64)
            for key in (
                "mean",
                "scale",
                "coef",
                "reference_hist",
                "pos_mean",
                "pos_scale",
                "feature_mean",
                "feature_std",
            )
        }
        if self.density is not None:
            chols = [np.asarray(chol) for chol in self.density["precisions_cholesky"]]
            arr["components"] = [
                (math.log(w), float(np.log(np.diag(chol)).sum()), np.asarray(mu), chol)
                for w, mu, chol in zip(self.density["weights"], self.density["means"], chols, strict=True)
            ]
        return arr

    @property
    def version(self) -> int:
        return 2 if self.features == FEATURE_NAMES else 1

    def statistics(self, image: Image.Image) -> np.ndarray:
        return image_statistics(image, self._arrays["reference_hist"], shape=self.version >= 2)

    def log_density(self, x: np.ndarray) -> np.ndarray:
        """Log-density of the statistics ``x`` (rows) under the smear images' Gaussian mixture."""
        assert self.density is not None and self.pos_mean is not None and self.pos_scale is not None
        arr = self._arrays
        z = (np.atleast_2d(x) - arr["pos_mean"]) / arr["pos_scale"]
        parts = [
            log_w + log_det - 0.5 * (z.shape[1] * math.log(2 * math.pi) + (y * y).sum(axis=1))
            for log_w, log_det, mu, chol in arr["components"]
            for y in ((z - mu) @ chol,)
        ]
        stacked = np.stack(parts, axis=1)
        top = stacked.max(axis=1)
        return top + np.log(np.exp(stacked - top[:, None]).sum(axis=1))

    def fit_feature_statistics(self, pooled: np.ndarray, quantile: float = 0.99) -> None:
        """Store mean/std of training pooled features and the ``quantile`` of their distance."""
        pooled = np.asarray(pooled, dtype=np.float64)
        self.feature_mean = pooled.mean(axis=0).tolist()
        self.feature_std = (pooled.std(axis=0) + 1e-6).tolist()
        d = self._feature_distance(pooled)
        self.feature_distance_p99 = float(np.quantile(d, quantile))

    def _feature_distance(self, pooled: np.ndarray) -> np.ndarray:
        assert self.feature_mean is not None and self.feature_std is not None
        z = (np.atleast_2d(pooled) - self._arrays["feature_mean"]) / self._arrays["feature_std"]
        return np.sqrt((z * z).mean(axis=1))

    def _novelty(self, x: np.ndarray) -> np.ndarray:
        """Largest |z-score| of the statistics against the smear images' distribution."""
        assert self.pos_mean is not None and self.pos_scale is not None
        z = (np.atleast_2d(x) - self._arrays["pos_mean"]) / self._arrays["pos_scale"]
        return np.abs(z).max(axis=1)

    def _score_vector(self, v: np.ndarray) -> float:
        """Logistic probability, damped by exp(-excess) where the statistics are far from every smear seen
        (version 1: largest z-score over the novelty limit; version 2: log-density under the limit, which
        also caps the score below the threshold, so such an image is always refused)."""
        return self._scored(v)[0]

    def _scored(self, v: np.ndarray) -> tuple[float, float | None, float | None]:
        """:meth:`_score_vector`'s score, and the novelty and log-density it used (None where the gate
        has none), each computed once."""
        arr = self._arrays
        z = (v - arr["mean"]) / arr["scale"]
        logit = float(z @ arr["coef"] + self.intercept)
        p = 1.0 / (1.0 + math.exp(-max(min(logit, 50.0), -50.0)))
        novelty = density = None
        if self.novelty_limit is not None:
            novelty = float(self._novelty(v)[0])
            excess = novelty - self.novelty_limit
            if excess > 0:
                p *= math.exp(-4.0 * excess)
        if self.density is not None:
            density = float(self.log_density(v)[0])
            shortfall = float(self.density["log_density_limit"]) - density
            if shortfall > 0:
                p = min(p, self.threshold) * math.exp(-shortfall / len(self.features))
        return p, novelty, density

    def score(self, image: Image.Image) -> float:
        return self._score_vector(self.statistics(image))

    def evaluate(
        self, image: Image.Image, pooled_features: Any = None, statistics: np.ndarray | None = None
    ) -> GateResult:
        """Score an image; if ``pooled_features`` (the model's pooled features of this image) and
        stored feature statistics are given, the feature distance is reported in ``details`` and
        an image whose distance exceeds 2x the training 99th percentile is refused as well.
        ``statistics``: this image's :meth:`statistics`, where the caller computed them already."""
        v = self.statistics(image) if statistics is None else statistics
        s, novelty, density = self._scored(v)
        details: dict[str, Any] = {"statistics": dict(zip(self.features, (round(float(x), 5) for x in v), strict=True))}
        if self.novelty_limit is not None and novelty is not None:
            details["novelty"] = round(novelty, 5)
            details["novelty_limit"] = round(self.novelty_limit, 5)
        if self.density is not None and density is not None:
            details["log_density"] = round(density, 5)
            details["log_density_limit"] = round(float(self.density["log_density_limit"]), 5)
        accepted = s >= self.threshold
        if pooled_features is not None and self.feature_mean is not None and self.feature_distance_p99:
            arr = pooled_features
            if hasattr(arr, "detach"):
                arr = arr.detach().cpu().float().numpy()
            dist = float(self._feature_distance(np.asarray(arr).reshape(1, -1))[0])
            details["feature_distance"] = round(dist, 5)
            details["feature_distance_limit"] = round(2.0 * self.feature_distance_p99, 5)
            accepted = accepted and dist <= 2.0 * self.feature_distance_p99
        return GateResult(score=round(s, 6), threshold=self.threshold, accepted=bool(accepted), details=details)

    def check(
        self, image: Image.Image, pooled_features: Any = None, statistics: np.ndarray | None = None
    ) -> dict[str, Any]:
        """The answer's ``quality`` block; raises ``not_a_blood_smear`` when the gate refuses the image."""
        result = self.evaluate(image, pooled_features, statistics)
        score, threshold = float(result.score), float(result.threshold)
        if not result.accepted:
            raise RequestError(
                "not_a_blood_smear",
                f"this does not look like a peripheral blood smear field of view "
                f"(smear score {score:.3f} < threshold {threshold:.3f})",
                score=score,
                threshold=threshold,
            )
        return {"is_blood_smear": True, "smear_score": score, "smear_threshold": threshold}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "logistic_image_statistics",
            "version": self.version,
            "threshold": self.threshold,
            "features": list(self.features),
            "mean": self.mean,
            "scale": self.scale,
            "coef": self.coef,
            "intercept": self.intercept,
            "reference_hist": self.reference_hist,
            "reference_hist_bins": list(_HIST_BINS),
            "pos_mean": self.pos_mean,
            "pos_scale": self.pos_scale,
            "novelty_limit": self.novelty_limit,
            "feature_mean": self.feature_mean,
            "feature_std": self.feature_std,
            "feature_distance_p99": self.feature_distance_p99,
            "density": self.density,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SmearGate:
        if d.get("kind") != "logistic_image_statistics":
            raise ValueError(f"unknown smear gate kind {d.get('kind')!r}")
        features = tuple(d.get("features", []))
        if features not in (FEATURE_NAMES, _BASE_FEATURE_NAMES):
            raise ValueError("smear gate was fitted on different image statistics")
        n = len(features)
        for key in ("mean", "scale", "coef"):
            if len(d[key]) != n:
                raise ValueError(f"smear gate {key} must have {n} values")
        density = d.get("density")
        if density is not None:
            k = len(density["weights"])
            means, chol = np.asarray(density["means"]), np.asarray(density["precisions_cholesky"])
            if means.shape != (k, n) or chol.shape != (k, n, n) or d.get("pos_mean") is None:
                raise ValueError(f"smear gate density must hold {k} means of {n} and {k} {n}x{n} matrices")
        return cls(
            threshold=float(d["threshold"]),
            mean=[float(v) for v in d["mean"]],
            scale=[float(v) for v in d["scale"]],
            coef=[float(v) for v in d["coef"]],
            intercept=float(d["intercept"]),
            reference_hist=[float(v) for v in d["reference_hist"]],
            pos_mean=d.get("pos_mean"),
            pos_scale=d.get("pos_scale"),
            novelty_limit=d.get("novelty_limit"),
            feature_mean=d.get("feature_mean"),
            feature_std=d.get("feature_std"),
            feature_distance_p99=d.get("feature_distance_p99"),
            info=dict(d.get("info", {})),
            features=features,
            density=density,
        )
