"""Grad-CAM class-activation maps on the CNN stage of a :class:`served_model.network.HybridClassifier`.

The gradient of the predicted class's logit is taken with respect to the CNN feature map
(:meth:`~served_model.network.HybridClassifier.forward_cnn`, shape ``(1, C, H, W)``); channel weights are
the spatially averaged gradients, the map is ``ReLU(sum_c w_c * A_c)`` scaled to 0..1. Only the
sequence stage and head run with gradients (the CNN runs once without), so an explanation costs
about one forward pass plus a small backward pass; the logits and pooled features of that one pass
are returned too, so an explanation answers the prediction as well without a second forward. The
grid covers the whole frame (the model squashes the frame), so it is stretched over the original
image for the overlay.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

__all__ = ["CamResult", "grad_cam", "colorize", "overlay_png", "overlay_png_base64", "OVERLAY_MAX_SIDE"]

OVERLAY_MAX_SIDE = 512

# Anchor colours of a perceptual blue -> cyan -> green -> yellow -> red map (like "turbo").
_ANCHORS = np.array(
    [
        [48, 18, 59],
        [70, 107, 227],
        [40, 187, 236],
        [49, 241, 154],
        [164, 252, 60],
        [238, 207, 58],
        [251, 128, 34],
        [209, 49, 6],
        [122, 4, 3],
    ],
    dtype=np.float64,
)


@dataclass(frozen=True)
class CamResult:
    grid: np.ndarray  # (H, W) float in [0, 1]
    class_index: int
    logits: torch.Tensor  # (num_classes,)
    pooled: torch.Tensor  # (num_features,): the head's input (``forward_head(..., pre_logits=True)``)


def grad_cam(model: torch.nn.Module, x: torch.Tensor, class_index: int | None = None) -> CamResult:
    """Grad-CAM for one image tensor ``x`` of shape (1, 3, S, S); ``class_index`` None = predicted."""
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError("grad_cam takes one image: x must have shape (1, 3, S, S)")
    with torch.inference_mode(False), torch.enable_grad():
        with torch.no_grad():
            fmap = model.forward_cnn(x)  # type: ignore[operator]
        fmap = fmap.detach().clone().requires_grad_(True)
        tokens = model.forward_sequence(fmap)  # type: ignore[operator]
        pooled = model.forward_head(tokens, pre_logits=True)[0]  # type: ignore[operator]
        logits = model.forward_head(tokens)[0]  # type: ignore[operator]
        idx = int(logits.argmax()) if class_index is None else int(class_index)
        (grads,) = torch.autograd.grad(logits[idx], fmap)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * fmap.detach()).sum(dim=1))[0]
    peak = float(cam.max())
    grid = (cam / peak).numpy() if peak > 0 else torch.zeros_like(cam).numpy()
    return CamResult(grid=grid.astype(np.float64), class_index=idx, logits=logits.detach(), pooled=pooled.detach())


def colorize(grid: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours."""
    g = np.clip(grid, 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.floor(g).astype(int)
    hi = np.minimum(lo + 1, len(_ANCHORS) - 1)
    frac = (g - lo)[..., None]
    rgb = _ANCHORS[lo] * (1 - frac) + _ANCHORS[hi] * frac
    return np.rint(rgb).astype(np.uint8)


def overlay_png(image: Image.Image, grid: np.ndarray, alpha: float = 0.45, max_side: int = OVERLAY_MAX_SIDE) -> bytes:
    """The heatmap stretched over the whole ``image`` (shrunk to ``max_side``), as PNG bytes."""
    base = image.convert("RGB")
    scale = min(1.0, max_side / max(base.size))
    size = (max(1, round(base.width * scale)), max(1, round(base.height * scale)))
    base = base.resize(size, Image.Resampling.BILINEAR) if size != base.size else base
    heat = Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8), mode="L")
    heat = heat.resize(size, Image.Resampling.BICUBIC)
    colours = Image.fromarray(colorize(np.asarray(heat, dtype=np.float64) / 255.0), mode="RGB")
    blended = Image.blend(base, colours, alpha)
    buf = io.BytesIO()
    blended.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def overlay_png_base64(image: Image.Image, grid: np.ndarray) -> str:
    return base64.b64encode(overlay_png(image, grid)).decode("ascii")
