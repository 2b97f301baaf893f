"""Preprocessing shared by training, evaluation and the TorchServe handler (one definition).

The training images are whole 4:3 microscope frames squashed to a square, so inference does the
same: the whole frame is resized to the model's square input (no centre crop), then normalised
with the backbone's mean/std from the registry. If the model uses stain normalisation it is
applied first, by the same function in training and in serving.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.registry import ModelSpec

__all__ = ["data_config", "resize_frame", "to_normalized_tensor", "grey_level_table", "build_eval_transform"]

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def data_config(spec: ModelSpec) -> dict[str, Any]:
    """Input size, mean, std and interpolation of ``spec``, from its backbone's pretrained config in timm."""
    import timm

    from served_model import compat  # noqa: F401  (before timm)

    cfg = timm.get_pretrained_cfg(spec.timm_name)
    if cfg is None:
        raise KeyError(f"timm has no pretrained config {spec.timm_name!r}")
    return {
        "input_size": (3, spec.input_size, spec.input_size),
        "mean": tuple(float(v) for v in cfg.mean),
        "std": tuple(float(v) for v in cfg.std),
        "interpolation": "bicubic" if cfg.interpolation == "bicubic" else "bilinear",
        "crop_pct": 1.0,  # never centre-crop: training frames are squashed whole
    }


def resize_frame(image: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize the whole RGB frame to ``size`` x ``size`` (aspect ratio not preserved)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size == (size, size):
        return image
    return image.resize((size, size), resample=_RESAMPLE[interpolation], reducing_gap=None)


def to_normalized_tensor(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """PIL RGB -> float tensor (3, H, W) in [0, 1], normalised per channel."""
    arr = np.asarray(image, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (t - m) / s


def grey_level_table(mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """What :func:`to_normalized_tensor` makes of each grey level 0..255 in each channel, (3, 256): the
    same operations on an image of the 256 levels, so that ``table[:, grey]`` equals them bit for bit."""
    levels = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    return to_normalized_tensor(Image.fromarray(levels), mean, std)[:, 0, :].contiguous()


def build_eval_transform(spec: ModelSpec) -> Callable[[Image.Image], torch.Tensor]:
    """The deterministic transform used for validation, evaluation and serving."""
    cfg = data_config(spec)
    size, mean, std, interp = spec.input_size, cfg["mean"], cfg["std"], cfg["interpolation"]
    stain = None
    if spec.stain_normalization == "luminance":
        from served_model.stain import standardized_luminance

        # standardize_luminance's grey replicated to RGB, then to_normalized_tensor, as one lookup: equal
        # tensors, without the RGB image and the float passes over its three channels
        table = grey_level_table(mean, std)

        def luminance_transform(image: Image.Image) -> torch.Tensor:
            grey = standardized_luminance(resize_frame(image, size, interp))
            flat = torch.index_select(table, 1, torch.from_numpy(grey.astype(np.int64)).view(-1))
            return flat.view(3, *grey.shape)

        return luminance_transform
    if spec.stain_normalization:
        from served_model import stain as stain_module  # type: ignore[attr-defined]

        stain = stain_module.get_normalizer(spec.stain_normalization)

    def transform(image: Image.Image) -> torch.Tensor:
        image = resize_frame(image, size, interp)
        if stain is not None:
            image = stain(image)
        return to_normalized_tensor(image, mean, std)

    return transform
