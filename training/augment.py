"""Training augmentation and the fixed evaluation perturbations.

Geometric: horizontal/vertical flips, 90-degree rotations, scale/crop jitter (a random crop of
80-100% of the frame's side, resized back). Colour: HED stain jitter, hue, saturation, brightness,
white-balance (per-channel gain) shifts and random grayscale. Everything draws from a
``numpy.random.Generator``, so a seed fixes the result.

:data:`PERTURBATIONS` are the deterministic colour changes used by evaluation (grayscale, Reinhard
stain normalisation, a hue shift and a white-balance shift).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from served_model.stain import hed_jitter, reinhard_normalize

__all__ = [
    "grayscale",
    "hue_shift",
    "white_balance",
    "PERTURBATIONS",
    "ColorAugment",
    "GeometricAugment",
    "TrainAugment",
    "geometric_grid",
]


def grayscale(image: Image.Image) -> Image.Image:
    """Luminance, replicated to three channels."""
    return image.convert("L").convert("RGB")


def hue_shift(image: Image.Image, degrees: float) -> Image.Image:
    """Rotate the hue of every pixel by ``degrees``."""
    hsv = np.asarray(image.convert("RGB").convert("HSV")).copy()
    shift = int(round(degrees / 360.0 * 256.0))
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 256).astype(np.uint8)
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


def white_balance(image: Image.Image, gains: tuple[float, float, float]) -> Image.Image:
    """Multiply R, G, B by ``gains`` (a camera white-balance change)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) * np.asarray(gains, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


#: Fixed evaluation perturbations: name -> function.
PERTURBATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "grayscale": grayscale,
    "stain_normalized": reinhard_normalize,
    "hue_shift": lambda im: hue_shift(im, 20.0),
    "white_balance": lambda im: white_balance(im, (1.12, 1.0, 0.85)),
}


@dataclass
class ColorAugment:
    """Random colour change: HED jitter, hue, saturation, brightness, white balance, grayscale."""

    p_hed: float = 0.8
    hed_sigma: float = 0.08
    hed_bias: float = 0.08
    p_hsv: float = 0.8
    hue_degrees: float = 25.0
    saturation: tuple[float, float] = (0.6, 1.4)
    brightness: tuple[float, float] = (0.8, 1.2)
    contrast: tuple[float, float] = (0.8, 1.2)
    p_wb: float = 0.7
    wb_range: float = 0.2
    p_gray: float = 0.2

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        image = image.convert("RGB")
        if rng.random() < self.p_hed:
            image = hed_jitter(image, rng, self.hed_sigma, self.hed_bias)
        if rng.random() < self.p_hsv:
            image = hue_shift(image, float(rng.uniform(-self.hue_degrees, self.hue_degrees)))
            image = ImageEnhance.Color(image).enhance(float(rng.uniform(*self.saturation)))
        image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(*self.brightness)))
        image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(*self.contrast)))
        if rng.random() < self.p_wb:
            gains = tuple(float(g) for g in rng.uniform(1.0 - self.wb_range, 1.0 + self.wb_range, size=3))
            image = white_balance(image, gains)  # type: ignore[arg-type]
        if rng.random() < self.p_gray:
            image = grayscale(image)
        return image


@dataclass
class GeometricAugment:
    """Flips, 90-degree rotations and scale/crop jitter on the squashed frame."""

    min_scale: float = 0.8
    p_crop: float = 0.5

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = image.size
        if rng.random() < self.p_crop:
            s = float(rng.uniform(self.min_scale, 1.0))
            cw, ch = max(1, int(round(w * s))), max(1, int(round(h * s)))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            image = image.resize((w, h), Image.Resampling.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        k = int(rng.integers(0, 4))
        if k:
            rotations = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
            image = image.transpose(rotations[k - 1])
        return image


@dataclass
class TrainAugment:
    """Geometric then colour augmentation; ``seed`` + sample index + epoch fix every draw."""

    seed: int = 0
    geometric: GeometricAugment | None = None
    color: ColorAugment | None = None

    def __post_init__(self) -> None:
        self.geometric = self.geometric or GeometricAugment()
        self.color = self.color or ColorAugment()

    def rng(self, index: int, epoch: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index])

    def __call__(self, image: Image.Image, index: int, epoch: int = 0) -> Image.Image:
        rng = self.rng(index, epoch)
        assert self.geometric is not None and self.color is not None
        return self.color(self.geometric(image.convert("RGB"), rng), rng)


def geometric_grid(grid: np.ndarray | object, k: int, flip: bool) -> object:
    """Rotate a (..., H, W) feature grid by k x 90 degrees and optionally flip it (torch or numpy).

    The cheap geometric augmentation for cached CNN feature maps: a rotated image has (about)
    the rotated feature map.
    """
    import torch

    if isinstance(grid, torch.Tensor):
        out = torch.rot90(grid, k, dims=(-2, -1)) if k % 4 else grid
        return torch.flip(out, dims=(-1,)) if flip else out
    arr = np.rot90(np.asarray(grid), k, axes=(-2, -1)) if k % 4 else np.asarray(grid)
    return arr[..., ::-1] if flip else arr
