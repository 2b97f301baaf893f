"""Building a cell typer for training: its initialisation (random, timm's hub, an offline file or an
earlier typer) and the stem/tail split for training on cached feature maps.

The typer itself (model, crop, preprocessing, save/load) is :mod:`served_model.cell_typer`, the
definition the served runtime runs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.registry import CellModelSpec
from served_model.cell_typer import TIMM_KWARGS, WEIGHTS_FILE, CellTyper, load_typer
from served_model.provenance import file_sha256

__all__ = ["create_typer", "typer_split"]

#: classes of the offline init file's head (19 dog breeds); only needed to load it strictly
_INIT_NUM_CLASSES = 19


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
