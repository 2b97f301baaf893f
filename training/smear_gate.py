"""Fitting the smear gate (:class:`served_model.smear_gate.SmearGate`): synthetic non-smear images and the fit.

:func:`synthetic_negatives` draws non-smear images (noise, flat colours, gradients, text pages,
shapes, stripes, fluorescence-like frames, crops of natural photos; :mod:`training.gate_families`
adds real photographs, fundus, tissue, fluorescence, other microscopy and medical images);
:func:`fit_smear_gate` fits the logistic regression (scikit-learn) on the statistics of smear frames,
each also under random colour augmentation so that other stains / white balances stay accepted,
against those negatives, and with ``density_components`` a Gaussian mixture of the smear statistics
(:func:`fit_on_statistics` does both on statistics already computed). Only the fitted numbers travel
in the model card; serving uses served_model.smear_gate alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from served_model.gate_statistics import _hue_sat_hist, _prepare, image_statistics
from served_model.smear_gate import SmearGate

__all__ = ["NEGATIVE_KINDS", "fit_on_statistics", "fit_smear_gate", "positive_statistics", "synthetic_negatives"]


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


def positive_statistics(
    images: Iterable[Image.Image], ref: np.ndarray, augment_views: int = 1, seed: int = 0
) -> np.ndarray:
    """Statistics of each smear image and of ``augment_views`` random colour views of it
    (:class:`training.augment.ColorAugment`: stain, hue, saturation, white balance, grayscale)."""
    from training.augment import ColorAugment

    aug = ColorAugment()
    rng = np.random.default_rng(seed)
    rows = []
    for im in images:
        im = im.convert("RGB")
        rows.append(image_statistics(im, ref))
        for _ in range(augment_views):
            rows.append(image_statistics(aug(im, rng), ref))
    return np.asarray(rows)


def fit_on_statistics(
    pos: np.ndarray,
    neg: np.ndarray,
    ref: np.ndarray,
    target_acceptance: float = 0.99,
    density_components: int = 0,
    seed: int = 0,
) -> SmearGate:
    """The gate from statistics already computed (rows of :func:`served_model.gate_statistics.image_statistics`).

    Without ``density_components``: the logistic regression with the version-1 novelty damping; the
    threshold keeps ``target_acceptance`` of ``pos`` accepted (never above 0.5). With them: a Gaussian
    mixture of that many full-covariance components on the standardised smear statistics, and the
    refusal budget ``1 - target_acceptance`` of the fitting smears split in two halves: the
    classifier's threshold refuses one half, the log-density limit the other."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.mixture import GaussianMixture

    x = np.r_[pos, neg]
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000)
    clf.fit((x - mean) / scale, y)
    gate = SmearGate(
        threshold=0.5,
        mean=mean.tolist(),
        scale=scale.tolist(),
        coef=clf.coef_[0].tolist(),
        intercept=float(clf.intercept_[0]),
        reference_hist=np.asarray(ref).tolist(),
    )
    gate.pos_mean = pos.mean(axis=0).tolist()
    gate.pos_scale = (pos.std(axis=0) + 1e-6).tolist()
    refuse = 1.0 - target_acceptance
    if density_components:
        z = (pos - np.asarray(gate.pos_mean)) / np.asarray(gate.pos_scale)
        gm = GaussianMixture(density_components, covariance_type="full", reg_covar=1e-2, random_state=seed).fit(z)
        gate.density = {
            "weights": gm.weights_.tolist(),
            "means": gm.means_.tolist(),
            "precisions_cholesky": gm.precisions_cholesky_.tolist(),
            "log_density_limit": 0.0,
        }
        gate.density["log_density_limit"] = float(np.quantile(gate.log_density(pos), refuse / 2))
        refuse /= 2
        probs = clf.predict_proba((pos - mean) / scale)[:, 1]
        gate.threshold = float(min(0.5, np.quantile(probs, refuse)))
    else:
        gate.novelty_limit = float(1.5 * np.quantile(gate._novelty(pos), 0.999))
        scores = np.array([gate._score_vector(v) for v in pos])
        gate.threshold = float(min(0.5, np.quantile(scores, refuse)))
    gate.info = {"n_positive": len(pos), "n_negative": len(neg), "density_components": density_components}
    return gate


def fit_smear_gate(
    images: Iterable[Image.Image],
    extra_positives: Iterable[Image.Image] = (),
    negatives: Iterable[Image.Image] | None = None,
    n_negatives: int = 900,
    augment_views: int = 1,
    seed: int = 0,
    target_acceptance: float = 0.99,
    density_components: int = 0,
) -> SmearGate:
    """Fit on smear ``images`` (training frames), each also under ``augment_views`` random colour
    augmentations, plus ``extra_positives``; negatives default to :func:`synthetic_negatives`.
    See :func:`fit_on_statistics` for the threshold(s) and ``density_components``."""
    pos_images = [im.convert("RGB") for im in images] + [im.convert("RGB") for im in extra_positives]
    if not pos_images:
        raise ValueError("no smear images to fit on")
    ref = np.mean([_hue_sat_hist(_prepare(im)) for im in pos_images], axis=0)
    pos = positive_statistics(pos_images, ref, augment_views, seed)
    negs = negatives if negatives is not None else (im for _, im in synthetic_negatives(n_negatives, seed))
    neg = np.asarray([image_statistics(im, ref) for im in negs])
    gate = fit_on_statistics(pos, neg, ref, target_acceptance, density_components, seed)
    gate.info.update(augment_views=augment_views, seed=seed)
    return gate
