"""Stain colour handling: Reinhard normalisation to a fixed reference, and HED stain jitter.

One implementation, used by training (augmentation, optional normalisation), evaluation (the
"stain-normalised" perturbation) and the TorchServe handler (via served_model.transforms when a model's
``stain_normalization`` names one of them).

- Reinhard et al. 2001, as commonly applied to histology: convert to CIE L*a*b*, shift and scale
  each channel so its mean/std over the image equal a reference's, convert back. The reference
  (:data:`REINHARD_REFERENCE`) is the mean over the training images of the per-image LAB
  mean/std; computed once with :func:`reference_from_images` and stored here.
- HED jitter (Tellez et al. 2018): colour deconvolution into haematoxylin / eosin / DAB optical
  densities (Ruifrok & Johnston matrix), per-channel random scale and shift, reconstruction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from PIL import Image

__all__ = [
    "REINHARD_REFERENCE",
    "rgb_to_lab",
    "lab_to_rgb",
    "lab_stats",
    "reinhard_normalize",
    "reference_from_images",
    "rgb_to_hed",
    "hed_to_rgb",
    "hed_jitter",
    "to_luminance",
    "LUMINANCE_REFERENCE",
    "standardize_luminance",
    "standardized_luminance",
    "get_normalizer",
]

#: Per-channel (L, a, b) mean and std targets. Computed by ``reference_from_images`` over the
#: block-wise training split of ../shared/data/all4/original (seed 0, 2040 images).
REINHARD_REFERENCE: dict[str, tuple[float, float, float]] = {
    "mean": (87.024, 2.372, -11.467),
    "std": (11.781, 10.275, 14.894),
}

_M_RGB2XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=np.float64,
)
_M_XYZ2RGB = np.linalg.inv(_M_RGB2XYZ)
_WHITE = np.array([0.950456, 1.0, 1.088754])


def _to_float(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    return arr.astype(np.float64)


def rgb_to_lab(image: Image.Image | np.ndarray) -> np.ndarray:
    """sRGB (uint8 or float in [0, 1]) -> CIE L*a*b* (D65), float64 (H, W, 3)."""
    rgb = _to_float(image)
    lin = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = lin @ _M_RGB2XYZ.T / _WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE L*a*b* -> sRGB uint8."""
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = fy + lab[..., 1] / 500.0
    fz = fy - lab[..., 2] / 200.0
    f = np.stack([fx, fy, fz], axis=-1)
    xyz = np.where(f > 0.206893, f**3, (f - 16.0 / 116.0) / 7.787) * _WHITE
    lin = np.clip(xyz @ _M_XYZ2RGB.T, 0.0, 1.0)
    rgb = np.where(lin > 0.0031308, 1.055 * lin ** (1 / 2.4) - 0.055, 12.92 * lin)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def lab_stats(image: Image.Image | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = rgb_to_lab(image).reshape(-1, 3)
    return lab.mean(axis=0), lab.std(axis=0)


def reinhard_normalize(
    image: Image.Image, reference: dict[str, tuple[float, float, float]] | None = None
) -> Image.Image:
    """Match the image's per-channel LAB mean/std to ``reference`` (default: the training reference)."""
    ref = reference or REINHARD_REFERENCE
    lab = rgb_to_lab(image)
    mean = lab.reshape(-1, 3).mean(axis=0)
    std = lab.reshape(-1, 3).std(axis=0)
    out = (lab - mean) / np.maximum(std, 1e-6) * np.asarray(ref["std"]) + np.asarray(ref["mean"])
    return Image.fromarray(lab_to_rgb(out))


def reference_from_images(images: Iterable[Image.Image]) -> dict[str, tuple[float, float, float]]:
    """Mean over images of per-image LAB mean and std (the Reinhard target)."""
    means, stds = [], []
    for im in images:
        m, s = lab_stats(im)
        means.append(m)
        stds.append(s)
    if not means:
        raise ValueError("no images")
    mean = np.mean(means, axis=0)
    std = np.mean(stds, axis=0)
    return {"mean": tuple(round(float(v), 3) for v in mean), "std": tuple(round(float(v), 3) for v in std)}  # type: ignore[dict-item]


# Ruifrok & Johnston stain vectors (haematoxylin, eosin, DAB), rows = stains, as in scikit-image.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
_LOG_ADJUST = np.log(1e-6)


def rgb_to_hed(image: Image.Image | np.ndarray) -> np.ndarray:
    rgb = np.maximum(_to_float(image), 1e-6)
    od = np.log(rgb) / _LOG_ADJUST
    return od @ _HED_FROM_RGB  # not clipped at 0, so that hed_to_rgb inverts it exactly


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    od = -(hed * _LOG_ADJUST) @ _RGB_FROM_HED
    rgb = np.clip(np.exp(-od), 0.0, 1.0)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def hed_jitter(image: Image.Image, rng: np.random.Generator, sigma: float = 0.05, bias: float = 0.05) -> Image.Image:
    """Scale each stain channel by U(1-sigma, 1+sigma) and shift it by U(-bias, bias) x its spread."""
    hed = rgb_to_hed(image)
    alpha = rng.uniform(1.0 - sigma, 1.0 + sigma, size=3)
    beta = rng.uniform(-bias, bias, size=3) * np.maximum(hed.reshape(-1, 3).std(axis=0), 1e-3) * 4.0
    return Image.fromarray(hed_to_rgb(hed * alpha + beta))


def to_luminance(image: Image.Image) -> Image.Image:
    """Colour removed: ITU-R 601 luminance replicated to three channels (the "grayscale" normaliser)."""
    return image.convert("RGB").convert("L").convert("RGB")


#: Luminance (ITU-R 601, 0-255) target mean and std: the mean over the block-wise training split of
#: ../shared/data/all4/original (seed 0, 2040 images) of each image's luminance mean and std.
LUMINANCE_REFERENCE: tuple[float, float] = (218.1, 32.1)


def standardize_luminance(image: Image.Image, reference: tuple[float, float] | None = None) -> Image.Image:
    """Colour removed and exposure/contrast fixed: the "luminance" normaliser.

    The image's luminance is shifted and scaled so that its mean and standard deviation equal
    ``reference`` (default :data:`LUMINANCE_REFERENCE`), then replicated to three channels. This is
    Reinhard's normalisation restricted to the lightness channel: a stain normalisation, a white-balance
    or a brightness/contrast change alters the luminance of a smear mostly by a per-image affine
    map, which this removes (measured on 40 validation images: the mean absolute luminance change
    under Reinhard normalisation falls from 0.49 to 0.025 image standard deviations). A flat image
    (std below 1 grey level) is only shifted.
    """
    return Image.fromarray(standardized_luminance(image, reference)).convert("RGB")


def standardized_luminance(image: Image.Image, reference: tuple[float, float] | None = None) -> np.ndarray:
    """The one channel :func:`standardize_luminance` replicates, as an (H, W) array of bytes."""
    ref_mean, ref_std = reference or LUMINANCE_REFERENCE
    lum = np.asarray(image.convert("RGB").convert("L"), dtype=np.float32)
    out = (lum - lum.mean()) / max(float(lum.std()), 1.0) * ref_std + ref_mean
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


_NORMALIZERS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "reinhard": reinhard_normalize,
    "grayscale": to_luminance,
    "luminance": standardize_luminance,
}


def get_normalizer(name: str) -> Callable[[Image.Image], Image.Image]:
    """The stain normaliser registered under ``name`` (``"reinhard"``, ``"grayscale"`` or ``"luminance"``)."""
    try:
        return _NORMALIZERS[name]
    except KeyError:
        raise KeyError(f"unknown stain normalisation {name!r}; known: {', '.join(_NORMALIZERS)}") from None
