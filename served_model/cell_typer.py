"""The cell typer: a small CNN that names the type of one white cell from a square crop around it.

One definition of the model, the crop and the preprocessing, shared by training
(:mod:`training.train_cells`, which builds a typer with :mod:`training.cell_typer`), evaluation
(:mod:`training.cell_typer_eval`) and the TorchServe runtime of ``wbc_cells``, so a detected cell is
cropped and normalised exactly as in training.

- **Crop** (:func:`crop_box`, :func:`crop_cell`): the cell's box grown by ``spec.crop_margin`` x its
  longer side on every side, made square around the box centre, and slid back inside the image (a
  cell near the border keeps real context instead of padding). Only a square larger than the
  image is clipped; :func:`crop_cell` then pads it to a square with the crop's median border
  colour (the smear background). PBC images are themselves such crops (a cell centred with its
  neighbourhood), so training uses the whole PBC image as the crop.
- **Model** (:class:`CellTyper`): a timm backbone (``spec.backbone``) with a linear head over
  ``spec.classes``, written and read by :func:`save_typer` / :func:`load_typer`. The only offline
  ImageNet-derived initialisation for a small backbone is a MobileNetV2 built with TF "same" padding,
  hence :data:`TIMM_KWARGS` (building from it: :mod:`training.cell_typer`).
- **Preprocessing** (:func:`build_typer_transform`): resize the square crop to
  ``spec.input_size`` (bicubic), normalise with ``spec.mean``/``spec.std``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from core.registry import CellModelSpec
from served_model import compat  # noqa: F401  (before timm)
from served_model.transforms import resize_frame, to_normalized_tensor

__all__ = [
    "TIMM_KWARGS",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "CellTyper",
    "save_typer",
    "load_typer",
    "crop_box",
    "crop_cell",
    "build_typer_transform",
    "spec_from_dict",
]

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "model_config.json"
#: timm build arguments: the offline init file was trained with TF-style "same" padding
TIMM_KWARGS: dict[str, Any] = {"pad_type": "same"}


class CellTyper(nn.Module):
    """A timm classifier over ``spec.classes`` with the timm feature/head split.

    ``forward_features`` gives the backbone's feature map, ``forward_head(x, pre_logits=True)``
    the pooled feature vector (for an out-of-distribution gate), ``forward`` the logits.
    ``calibration`` holds the fitted temperature and abstention threshold once loaded.
    """

    def __init__(self, spec: CellModelSpec, num_classes: int | None = None) -> None:
        super().__init__()
        import timm

        self.spec = spec
        kwargs = TIMM_KWARGS | dict(spec.extra.get("timm_kwargs", {}))
        self.net: Any = timm.create_model(
            spec.backbone, pretrained=False, num_classes=num_classes or spec.num_classes, **kwargs
        )
        self.init_info: dict[str, Any] = {"source": "random"}
        self.calibration: dict[str, Any] = {}

    @property
    def num_features(self) -> int:
        return int(self.net.num_features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.net.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def spec_from_dict(d: dict[str, Any]) -> CellModelSpec:
    d = dict(d)
    d["classes"] = tuple(d["classes"])
    d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
    return CellModelSpec(**d)


def save_typer(model: CellTyper, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Write ``weights.safetensors`` (float32) and ``model_config.json`` (spec, init, timm kwargs, ``extra``)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    config: dict[str, Any] = {
        "spec": model.spec.to_dict(),
        "init": model.init_info,
        "timm_kwargs": TIMM_KWARGS | dict(model.spec.extra.get("timm_kwargs", {})),
    }
    if model.calibration:
        config["calibration"] = model.calibration
    config.update(extra or {})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def load_typer(directory: str | os.PathLike[str]) -> CellTyper:
    """Rebuild a typer written by :func:`save_typer`: float32, eval mode, ``spec``/``calibration`` set."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    model = CellTyper(spec_from_dict(config["spec"]))
    state = {k: v.float() for k, v in load_file(str(directory / WEIGHTS_FILE)).items()}
    model.load_state_dict(state, strict=True)
    model.init_info = config.get("init", {})
    model.calibration = config.get("calibration", {})
    return model.eval()


def crop_box(box: Sequence[float], margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The square crop window ``(x0, y0, x1, y1)`` (x1, y1 exclusive) around a cell's box.

    The side is the box's longer side x (1 + 2 x margin), at least 1 px; the square is centred on
    the box and shifted to lie inside the ``width`` x ``height`` image. Only when the square is
    larger than the image along an axis is it clipped to the image there (then not square).
    Boxes given in any corner order, degenerate (zero-size) or partly outside the image are accepted.
    """
    if width < 1 or height < 1:
        raise ValueError(f"empty image {width}x{height}")
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    side = max(1, int(round(max(x1 - x0, y1 - y0, 1.0) * (1.0 + 2.0 * margin))))

    def place(centre: float, limit: int) -> tuple[int, int]:
        if side >= limit:
            return 0, limit
        start = int(round(centre - side / 2.0))
        start = min(max(start, 0), limit - side)
        return start, start + side

    (cx0, cx1), (cy0, cy1) = place(cx, width), place(cy, height)
    return cx0, cy0, cx1, cy1


def crop_cell(image: Image.Image, box: Sequence[float], spec: CellModelSpec) -> Image.Image:
    """The square RGB crop the typer sees for the cell in ``box`` (native resolution, not resized)."""
    image = image.convert("RGB") if image.mode != "RGB" else image
    x0, y0, x1, y1 = crop_box(box, spec.crop_margin, image.width, image.height)
    crop = image.crop((x0, y0, x1, y1))
    w, h = crop.size
    if w == h:
        return crop
    # The square did not fit the image: pad with the background (median colour of the crop's border).
    arr = np.asarray(crop)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    fill = tuple(int(v) for v in np.median(border, axis=0))
    side = max(w, h)
    square = Image.new("RGB", (side, side), fill)
    square.paste(crop, ((side - w) // 2, (side - h) // 2))
    return square


def build_typer_transform(spec: CellModelSpec) -> Callable[[Image.Image], torch.Tensor]:
    """Eval preprocessing of a square crop: resize to ``spec.input_size`` (bicubic), normalise -> (3, S, S) float32."""
    size, mean, std = spec.input_size, spec.mean, spec.std

    def transform(crop: Image.Image) -> torch.Tensor:
        return to_normalized_tensor(resize_frame(crop, size, "bicubic"), mean, std)

    return transform
