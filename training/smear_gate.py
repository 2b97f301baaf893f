"""The smear gate: "is this image a stained peripheral blood smear field of view?".

The classifiers answer one of four classes for any input, so the handler first asks the gate and
refuses images that are not smears (photos, documents, noise, flat colour, other imaging).

How it decides: :func:`image_statistics` turns an image into a small vector of statistics that
describe a smear independent of its exact colours (luminance distribution and bright-background
fraction, chroma, gradient and Laplacian energies at two scales, colour quantisation, and the
prototype's colour-histogram correlation to the training distribution). A logistic regression on
the standardised vector separates smear frames (the training images, each also under random
colour augmentation so that other stains / white balances stay accepted, plus any extra smear
frames given, e.g. another lab's) from synthetic non-smear images (:func:`synthetic_negatives`:
noise, flat colours, gradients, text pages, shapes, stripes, fluorescence-like frames, crops of
natural photos). ``score`` is its probability in [0, 1]; ``accepted = score >= threshold``.

Optionally (``pooled_features`` given and the gate fitted with feature statistics) the distance of
the model's pooled features to the training distribution is reported in ``details`` as well.

Everything fitted is plain numbers, so :meth:`SmearGate.to_dict` goes into the model card and
:meth:`SmearGate.from_dict` rebuilds the gate in the handler without scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = [
    "FEATURE_NAMES",
    "GateResult",
    "SmearGate",
    "image_statistics",
    "synthetic_negatives",
    "NEGATIVE_KINDS",
]

_SIZE = 128
_HIST_BINS = (12, 4)  # hue x saturation bins of the prototype's histogram correlation

FEATURE_NAMES: tuple[str, ...] = (
    "lum_mean",
    "log_lum_std",
    "lum_p05",
    "lum_p50",
    "lum_p95",
    "bright_fraction",
    "dark_fraction",
    "chroma_mean",
    "log_chroma_std",
    "log_grad_mean",
    "log_grad_p90",
    "lap_ratio",
    "log_grad_mean_coarse",
    "lum_std_coarse_ratio",
    "top_colour_fraction",
    "log_unique_colour_fraction",
    "hist_correlation",
)


#: features compared on a log scale (they span orders of magnitude between image kinds)
_LOG_FEATURES = [
    FEATURE_NAMES.index(n)
    for n in (
        "log_lum_std",
        "log_chroma_std",
        "log_grad_mean",
        "log_grad_p90",
        "log_grad_mean_coarse",
        "log_unique_colour_fraction",
    )
]


@dataclass
class GateResult:
    score: float
    threshold: float
    accepted: bool
    details: dict[str, Any] = field(default_factory=dict)


def _prepare(image: Image.Image) -> np.ndarray:
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image.resize((_SIZE, _SIZE), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def _hue_sat_hist(rgb: np.ndarray) -> np.ndarray:
    img = Image.fromarray((rgb * 255).astype(np.uint8)).convert("HSV")
    hsv = np.asarray(img, dtype=np.float32) / 255.0
    hist, _, _ = np.histogram2d(
        hsv[..., 0].ravel(), hsv[..., 1].ravel(), bins=_HIST_BINS, range=((0.0, 1.0), (0.0, 1.0))
    )
    hist = hist.ravel()
    return hist / max(hist.sum(), 1.0)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def _grad(lum: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(lum)
    return np.hypot(gx, gy)


def image_statistics(image: Image.Image, reference_hist: np.ndarray | None = None) -> np.ndarray:
    """The gate's feature vector (see :data:`FEATURE_NAMES`)."""
    rgb = _prepare(image)
    lum = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = mx - mn
    g = _grad(lum)
    lap = np.abs(4 * lum[1:-1, 1:-1] - lum[:-2, 1:-1] - lum[2:, 1:-1] - lum[1:-1, :-2] - lum[1:-1, 2:])
    coarse = lum.reshape(_SIZE // 4, 4, _SIZE // 4, 4).mean(axis=(1, 3))
    gc = _grad(coarse)
    q = (rgb * 7.999).astype(np.int32)
    codes = q[..., 0] * 64 + q[..., 1] * 8 + q[..., 2]
    counts = np.bincount(codes.ravel(), minlength=512)
    fine_q = (rgb * 31.999).astype(np.int32)
    fine_codes = fine_q[..., 0] * 1024 + fine_q[..., 1] * 32 + fine_q[..., 2]
    p05, p50, p95 = np.percentile(lum, [5, 50, 95])
    hist_corr = _correlation(_hue_sat_hist(rgb), reference_hist) if reference_hist is not None else 0.0
    feats = [
        lum.mean(),
        lum.std(),
        p05,
        p50,
        p95,
        (lum > 0.7).mean(),
        (lum < 0.3).mean(),
        chroma.mean(),
        chroma.std(),
        g.mean(),
        np.percentile(g, 90),
        lap.mean() / (g.mean() + 1e-4),
        gc.mean(),
        coarse.std() / (lum.std() + 1e-4),
        counts.max() / counts.sum(),
        len(np.unique(fine_codes)) / fine_codes.size,
        hist_corr,
    ]
    out = np.asarray(feats, dtype=np.float64)
    out[_LOG_FEATURES] = np.log(out[_LOG_FEATURES] + 1e-4)  # energies: compare on a log scale
    return out


# -- synthetic non-smear images -----------------------------------------------------------------
NEGATIVE_KINDS: tuple[str, ...] = (
    "uniform_noise",
    "gaussian_noise",
    "flat",
    "gradient",
    "text",
    "shapes",
    "stripes",
    "fluorescence",
    "photo",
)

_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
)
_WORDS = tuple(
    [
        "patient",
        "sample",
        "report",
        "haematology",
        "laboratory",
        "smear",
        "result",
        "date",
        "signature",
        "review",
        "leukocyte",
        "count",
        "the",
        "of",
        "and",
        "to",
        "in",
        "is",
        "for",
        "with",
        "on",
        "as",
        "by",
        "at",
        "from",
        "total",
        "value",
        "reference",
        "range",
        "units",
        "comment",
        "page",
    ]
)


def _font(rng: np.random.Generator, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in rng.permutation(len(_FONTS)):
        try:
            return ImageFont.truetype(_FONTS[int(path)], size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _rand_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def _photos() -> list[Image.Image]:
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(a) for a in load_sample_images().images]


def _negative(kind: str, rng: np.random.Generator, size: tuple[int, int], photos: list[Image.Image]) -> Image.Image:
    w, h = size
    if kind == "uniform_noise":
        return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    if kind == "gaussian_noise":
        base = rng.uniform(40, 215, size=3)
        arr = base + rng.normal(0, rng.uniform(5, 60), size=(h, w, 3))
        if rng.random() < 0.5:
            arr = arr.mean(axis=-1, keepdims=True).repeat(3, axis=-1)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 2))))
    if kind == "flat":
        return Image.new("RGB", size, _rand_colour(rng))
    if kind == "gradient":
        t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None, None]
        if rng.random() < 0.3:
            yy, xx = np.mgrid[0:h, 0:w]
            t = (np.hypot(xx - w / 2, yy - h / 2) / math.hypot(w / 2, h / 2))[..., None]
        a, b = np.asarray(_rand_colour(rng)), np.asarray(_rand_colour(rng))
        arr = np.broadcast_to(a + (b - a) * t, (h, w, 3))
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if kind == "text":
        bg = (255, 255, 255) if rng.random() < 0.7 else _rand_colour(rng)
        img = Image.new("RGB", size, bg)
        d = ImageDraw.Draw(img)
        fs = int(rng.integers(10, 28))
        font = _font(rng, fs)
        y = int(rng.integers(0, fs))
        ink = (0, 0, 0) if rng.random() < 0.7 else _rand_colour(rng)
        while y < h:
            line = " ".join(_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), size=12))
            d.text((int(rng.integers(0, 20)), y), line, fill=ink, font=font)
            y += int(fs * rng.uniform(1.2, 1.8))
        return img
    if kind == "shapes":
        img = Image.new("RGB", size, _rand_colour(rng) if rng.random() < 0.5 else (250, 250, 250))
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 25))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)((x0, y0, x1, y1), fill=_rand_colour(rng))
        return img
    if kind == "stripes":
        period = int(rng.integers(4, 60))
        yy, xx = np.mgrid[0:h, 0:w]
        ang = rng.uniform(0, math.pi)
        t = (np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi / period) > 0)[..., None]
        arr = np.where(t, np.asarray(_rand_colour(rng)), np.asarray(_rand_colour(rng)))
        return Image.fromarray(arr.astype(np.uint8))
    if kind == "fluorescence":
        arr = np.zeros((h, w, 3), dtype=np.float32)
        ch = int(rng.integers(0, 3))
        yy, xx = np.mgrid[0:h, 0:w]
        for _ in range(int(rng.integers(5, 40))):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 20)
            arr[..., ch] += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)) * rng.uniform(0.3, 1.0)
            if rng.random() < 0.3:
                arr[..., (ch + 1) % 3] += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)) * 0.5
        arr = arr + rng.normal(0, 0.02, size=arr.shape)
        return Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))
    if kind == "photo":
        src = photos[int(rng.integers(0, len(photos)))]
        sw, sh = src.size
        s = rng.uniform(0.3, 1.0)
        cw, ch_ = int(sw * s), int(sh * s)
        x0, y0 = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch_ + 1))
        img = src.crop((x0, y0, x0 + cw, y0 + ch_)).resize(size, Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img
    raise KeyError(kind)


def synthetic_negatives(
    n: int, seed: int = 0, size: tuple[int, int] = (320, 240), kinds: Iterable[str] = NEGATIVE_KINDS
) -> Iterator[tuple[str, Image.Image]]:
    """``n`` non-smear images, cycling through ``kinds``; (kind, image) pairs, deterministic in ``seed``."""
    kinds = tuple(kinds)
    photos = _photos() if "photo" in kinds else []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        yield kind, _negative(kind, np.random.default_rng([seed, i]), size, photos)


# -- the gate -----------------------------------------------------------------------------------
@dataclass
class SmearGate:
    """Logistic regression on :func:`image_statistics`; plain numbers only (card-serialisable)."""

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

    version = 1

    @classmethod
    def fit(
        cls,
        images: Iterable[Image.Image],
        extra_positives: Iterable[Image.Image] = (),
        negatives: Iterable[Image.Image] | None = None,
        n_negatives: int = 900,
        augment_views: int = 1,
        seed: int = 0,
        target_acceptance: float = 0.99,
    ) -> SmearGate:
        """Fit on smear ``images`` (training frames), each also under ``augment_views`` random colour
        augmentations, plus ``extra_positives``; negatives default to :func:`synthetic_negatives`.
        The threshold is the largest of 0.5 and the value that keeps ``target_acceptance`` of
        the positives accepted, whichever is lower (never above 0.5)."""
        from sklearn.linear_model import LogisticRegression

        from training.augment import ColorAugment

        pos_images = [im.convert("RGB") for im in images] + [im.convert("RGB") for im in extra_positives]
        if not pos_images:
            raise ValueError("no smear images to fit on")
        ref = np.mean([_hue_sat_hist(_prepare(im)) for im in pos_images], axis=0)
        aug = ColorAugment()
        rng = np.random.default_rng(seed)
        pos = []
        for im in pos_images:
            pos.append(image_statistics(im, ref))
            for _ in range(augment_views):
                pos.append(image_statistics(aug(im, rng), ref))
        negs = negatives if negatives is not None else (im for _, im in synthetic_negatives(n_negatives, seed))
        neg = [image_statistics(im, ref) for im in negs]
        x = np.asarray(pos + neg)
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000)
        clf.fit((x - mean) / scale, y)
        gate = cls(
            threshold=0.5,
            mean=mean.tolist(),
            scale=scale.tolist(),
            coef=clf.coef_[0].tolist(),
            intercept=float(clf.intercept_[0]),
            reference_hist=ref.tolist(),
        )
        xp = np.asarray(pos)
        gate.pos_mean = xp.mean(axis=0).tolist()
        gate.pos_scale = (xp.std(axis=0) + 1e-6).tolist()
        gate.novelty_limit = float(1.5 * np.quantile(gate._novelty(xp), 0.999))
        scores = np.array([gate._score_vector(v) for v in pos])
        gate.threshold = float(min(0.5, np.quantile(scores, 1.0 - target_acceptance)))
        gate.info = {"n_positive": len(pos), "n_negative": len(neg), "augment_views": augment_views, "seed": seed}
        return gate

    def fit_feature_statistics(self, pooled: np.ndarray, quantile: float = 0.99) -> None:
        """Store mean/std of training pooled features and the ``quantile`` of their distance."""
        pooled = np.asarray(pooled, dtype=np.float64)
        self.feature_mean = pooled.mean(axis=0).tolist()
        self.feature_std = (pooled.std(axis=0) + 1e-6).tolist()
        d = self._feature_distance(pooled)
        self.feature_distance_p99 = float(np.quantile(d, quantile))

    def _feature_distance(self, pooled: np.ndarray) -> np.ndarray:
        assert self.feature_mean is not None and self.feature_std is not None
        z = (np.atleast_2d(pooled) - np.asarray(self.feature_mean)) / np.asarray(self.feature_std)
        return np.sqrt((z * z).mean(axis=1))

    def _novelty(self, x: np.ndarray) -> np.ndarray:
        """Largest |z-score| of the statistics against the smear images' distribution."""
        assert self.pos_mean is not None and self.pos_scale is not None
        z = (np.atleast_2d(x) - np.asarray(self.pos_mean)) / np.asarray(self.pos_scale)
        return np.abs(z).max(axis=1)

    def _score_vector(self, v: np.ndarray) -> float:
        """Logistic probability, damped by exp(-excess) where the statistics are far from every smear seen."""
        z = (v - np.asarray(self.mean)) / np.asarray(self.scale)
        logit = float(z @ np.asarray(self.coef) + self.intercept)
        p = 1.0 / (1.0 + math.exp(-max(min(logit, 50.0), -50.0)))
        if self.novelty_limit is not None:
            excess = float(self._novelty(v)[0]) - self.novelty_limit
            if excess > 0:
                p *= math.exp(-4.0 * excess)
        return p

    def score(self, image: Image.Image) -> float:
        return self._score_vector(image_statistics(image, np.asarray(self.reference_hist)))

    def evaluate(self, image: Image.Image, pooled_features: Any = None) -> GateResult:
        """Score an image; if ``pooled_features`` (the model's pooled features of this image) and
        stored feature statistics are given, the feature distance is reported in ``details`` and
        an image whose distance exceeds 2x the training 99th percentile is refused as well."""
        v = image_statistics(image, np.asarray(self.reference_hist))
        s = self._score_vector(v)
        details: dict[str, Any] = {"statistics": dict(zip(FEATURE_NAMES, (round(float(x), 5) for x in v), strict=True))}
        if self.novelty_limit is not None:
            details["novelty"] = round(float(self._novelty(v)[0]), 5)
            details["novelty_limit"] = round(self.novelty_limit, 5)
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "logistic_image_statistics",
            "version": self.version,
            "threshold": self.threshold,
            "features": list(FEATURE_NAMES),
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
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SmearGate:
        if d.get("kind") != "logistic_image_statistics":
            raise ValueError(f"unknown smear gate kind {d.get('kind')!r}")
        if list(d.get("features", [])) != list(FEATURE_NAMES):
            raise ValueError("smear gate was fitted on different image statistics")
        n = len(FEATURE_NAMES)
        for key in ("mean", "scale", "coef"):
            if len(d[key]) != n:
                raise ValueError(f"smear gate {key} must have {n} values")
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
        )
