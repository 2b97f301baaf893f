"""Test artifacts in the layout TRAINING produces (never committed): random-init fp16 weights + a card.

``build_artifact(name, root)`` writes ``root/<name>/model/{weights.safetensors,model_config.json}``
and ``root/<name>/card.json`` (training.card.base_card, validated), with a smear gate fitted by
``training.smear_gate.fit_smear_gate`` on real training images.
``unpacked_model_dir`` lays the same files out as TorchServe unpacks a .mar.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from core.card import validate_card
from core.registry import CLASS_NAMES
from served_model import compat  # noqa: F401  (before timm)
from served_model.network import count_parameters, create_model, save_model
from tests.conftest import DATA_ALL4
from training.card import base_card

__all__ = ["real_images", "build_artifact", "unpacked_model_dir"]


def real_images(per_class: int = 1, offset: int = 0) -> list[tuple[str, Path]]:
    """``per_class`` real training images per class, as (class, path), deterministic."""
    out = []
    for cls in CLASS_NAMES:
        files = sorted((DATA_ALL4 / "original" / cls).glob("*.jpg"))
        out += [(cls, f) for f in files[offset : offset + per_class]]
    return out


def _fit_gate(name: str, model: Any) -> dict[str, Any]:
    from training.smear_gate import fit_smear_gate

    images = [Image.open(p).convert("RGB") for _, p in real_images(per_class=8, offset=40)]
    return fit_smear_gate(images, n_negatives=300).to_dict()


def build_artifact(
    name: str, root: Path, *, temperature: float = 1.5, abstain_threshold: float = 0.3, seed: int = 0
) -> Path:
    """A TRAINING-layout artifact directory for ``name`` with random weights."""
    torch.manual_seed(seed)
    model = create_model(name).eval()
    out = Path(root) / name
    save_model(model, out / "model", dtype=torch.float16)
    card = base_card(model.spec, count_parameters(model), model.init_info)
    card["temperature"] = temperature
    card["abstain_threshold"] = abstain_threshold
    card["smear_gate"] = _fit_gate(name, model)
    validate_card(card)
    (out / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True))
    return out


def unpacked_model_dir(artifact: Path, dest: Path) -> Path:
    """The files of ``artifact`` as TorchServe's model_dir holds them after unpacking the .mar."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(artifact / "model", dest / "model", dirs_exist_ok=True)
    shutil.copy(artifact / "card.json", dest / "model_card.json")
    return dest
