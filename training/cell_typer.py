"""The cell typer: a small CNN that names the type of one white cell from a square crop around it.

One definition of the model, the crop and the preprocessing, shared by training
(:mod:`training.train_cells`), evaluation (:mod:`training.cell_typer_eval`) and the TorchServe
runtime of ``wbc_cells``, so a detected cell is cropped and normalised exactly as in training.

- **Crop** (:func:`crop_box`, :func:`crop_cell`): the cell's box grown by ``spec.crop_margin`` x its
  longer side on every side, made square around the box centre, and slid back inside the image (a
  cell near the border keeps real context instead of padding). Only a square larger than the
  image is clipped; :func:`crop_cell` then pads it to a square with the crop's median border
  colour (the smear background). PBC images are themselves such crops (a cell centred with its
  neighbourhood), so training uses the whole PBC image as the crop.
- **Model** (:class:`CellTyper`): a timm backbone (``spec.backbone``) with a linear head over
  ``spec.classes``. The only offline ImageNet-derived initialisation for a small backbone is a
  MobileNetV2 built with TF "same" padding, hence :data:`TIMM_KWARGS`; the file is loaded strictly
  with its own 19-class head, which is then replaced.
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
from training import compat  # noqa: F401  (before timm)
from training.provenance import file_sha256
from training.transforms import resize_frame, to_normalized_tensor

__all__ = [
    "TIMM_KWARGS",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "CellTyper",
    "create_typer",
    "save_typer",
    "load_typer",
    "crop_box",
    "crop_cell",
    "build_typer_transform",
    "spec_from_dict",
    "typer_split",
]

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "model_config.json"
#: timm build arguments: the offline init file was trained with TF-style "same" padding
TIMM_KWARGS: dict[str, Any] = {"pad_type": "same"}
#: classes of the offline init file's head (19 dog breeds); only needed to load it strictly
_INIT_NUM_CLASSES = 19


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


def typer_split(model: CellTyper, after_block: int) -> tuple[nn.Module, nn.Module]:
    """The feature extractor cut after ``blocks[after_block]``: ``(stem, tail)`` with
    ``tail(stem(x)) == model.forward_features(x)``.

    For training on cached feature maps: the frozen stem's output is computed once per augmented
    view, the tail (later blocks and the head convolution) trains. The modules are the model's own
    (shared, not copied). Valid for timm's EfficientNet family (MobileNetV2 included).
    """
    net = model.net
    blocks = list(net.blocks)
    if not 0 <= after_block < len(blocks) - 1:
        raise ValueError(f"after_block must be in [0, {len(blocks) - 2}], got {after_block}")
    stem = nn.Sequential(net.conv_stem, net.bn1, *blocks[: after_block + 1])
    tail = nn.Sequential(*blocks[after_block + 1 :], net.conv_head, net.bn2)
    return stem, tail


def create_typer(spec: CellModelSpec, init_weights: str | None) -> CellTyper:
    """Build the typer; ``init_weights`` is ``None``/``"random"``, ``"hub"``, a safetensors file or a typer directory.

    A file is a full timm state dict of ``spec.backbone`` (any float dtype, any head size): it is
    loaded strictly with its own head, then the head is replaced by one over ``spec.classes``.
    The choice (file name and SHA-256) is kept in ``model.init_info`` for model_config.json.
    """
    if init_weights in (None, "random"):
        return CellTyper(spec)
    if init_weights == "hub":
        import timm

        model = CellTyper(spec)
        hub = timm.create_model(spec.backbone, pretrained=True, num_classes=spec.num_classes, **TIMM_KWARGS)
        model.net.load_state_dict(hub.state_dict(), strict=True)
        model.init_info = {"source": "hub", "timm_name": spec.backbone}
        return model
    from safetensors.torch import load_file

    path = Path(init_weights)
    if path.is_dir():
        return _from_typer(spec, path)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    head_classes = _head_classes(state)
    model = CellTyper(spec, num_classes=head_classes)
    model.net.load_state_dict(state, strict=True)
    if head_classes != spec.num_classes:
        model.net.reset_classifier(spec.num_classes)
    model.init_info = {"source": "file", "path": path.name, "sha256": file_sha256(path), "strict": True}
    return model


def _from_typer(spec: CellModelSpec, directory: Path) -> CellTyper:
    """A typer over ``spec.classes`` fine-tuned from a saved one (:func:`save_typer`) with fewer or other classes.

    Every weight is copied; the classifier's rows of the classes both share are copied by name, a new
    class's row starts at zero weights and the lowest old bias (it starts rare, the loss raises it).
    """
    old = load_typer(directory)
    model = CellTyper(spec)
    state = old.net.state_dict()
    old_weight, old_bias = state["classifier.weight"], state["classifier.bias"]
    weight = torch.zeros((spec.num_classes, old_weight.shape[1]), dtype=old_weight.dtype)
    bias = torch.full((spec.num_classes,), float(old_bias.min()), dtype=old_bias.dtype)
    for i, name in enumerate(spec.classes):
        if name in old.spec.classes:
            j = old.spec.classes.index(name)
            weight[i], bias[i] = old_weight[j], old_bias[j]
    model.net.load_state_dict(state | {"classifier.weight": weight, "classifier.bias": bias}, strict=True)
    weights_file = directory / WEIGHTS_FILE
    model.init_info = {
        "source": "typer",
        "path": str(directory),
        "sha256": file_sha256(weights_file),
        "classes": list(old.spec.classes),
    }
    return model


def _head_classes(state: dict[str, torch.Tensor]) -> int:
    """Output size of the classifier in a timm state dict (``classifier.weight``)."""
    weight = state.get("classifier.weight")
    return int(weight.shape[0]) if weight is not None else _INIT_NUM_CLASSES


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
