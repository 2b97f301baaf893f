"""Each frame model's training recipe: the one place its numbers live.

``python -m training.train --model NAME`` (and ``make train-all``) runs :data:`RECIPES` ``[NAME]``
unless a command-line option overrides a field; :func:`describe` writes the recipe sentence that
``train_info.json`` and so the model card carry. The recipes are those of the shipped models (the
cards' training sections); ``shipped_on`` says where each ran, since a time-boxed recipe reaches
fewer epochs on a slower device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from core.paths import WEIGHTS

__all__ = ["XCEPTION_WEIGHTS", "Recipe", "RECIPES", "recipe_for", "describe", "training_order"]

XCEPTION_WEIGHTS = WEIGHTS / "legacy_xception.keras_in1k.backbone.fp16.safetensors"


@dataclass(frozen=True)
class Recipe:
    """How one model is trained (see :mod:`training.train` for the two kinds)."""

    kind: Literal["cached", "end2end"]
    #: "random", "hub", a backbone safetensors file, or "model:<name>": that trained model's CNN stage
    init_weights: str
    epochs: int
    lr: float
    batch_size: int = 32
    seed: int = 0
    max_minutes: float | None = None  # end2end: time box
    val_every: int = 1  # end2end: validate every N epochs (and the last)
    finetune_after: str | None = None  # cached: cache the CNN up to this child, fine-tune the rest
    views: str = "orig,color0"  # cached: training views of the feature cache
    pretrain_data: str | None = None  # end2end: "pbc" or a folder of cell-type folders
    pretrain_epochs: int = 30
    shipped_on: str = ""

    def init_path(self, artifacts: str | Path) -> str:
        """``init_weights`` with ``model:<name>`` resolved to ``<artifacts>/<name>/model``."""
        if self.init_weights.startswith("model:"):
            return str(Path(artifacts) / self.init_weights.removeprefix("model:") / "model")
        return self.init_weights


RECIPES: dict[str, Recipe] = {
    # ImageNet Xception: stem (up to block12) frozen and cached, conv3/conv4 fine-tuned with the head
    "xception_bigru": Recipe(
        kind="cached",
        init_weights=str(XCEPTION_WEIGHTS),
        epochs=12,
        lr=1e-3,
        finetune_after="block12",
        shipped_on="CPU, 2 cores: 17 min of feature caching, then 12 epochs",
    ),
    # random init, domain-pretrained on the PBC cell types first
    "effnetb3_bigru": Recipe(
        kind="end2end",
        init_weights="random",
        epochs=200,
        lr=3e-3,
        max_minutes=6.0,
        val_every=5,
        pretrain_data="pbc",
        pretrain_epochs=10,
        shipped_on="one NVIDIA H100 (3 data workers): the time box ended it at epoch 64",
    ),
    "mobilenetv3_lstm": Recipe(
        kind="end2end",
        init_weights="random",
        epochs=300,
        lr=3e-3,
        max_minutes=7.6,
        val_every=5,
        shipped_on="one NVIDIA H100 (5 data workers): the time box ended it at epoch 84",
    ),
    # effnetb3_bigru's trained CNN stage, the whole model fine-tuned (train effnetb3_bigru first)
    "effnetb3_vit": Recipe(
        kind="end2end",
        init_weights="model:effnetb3_bigru",
        epochs=300,
        lr=1e-3,
        max_minutes=7.6,
        val_every=5,
        shipped_on=(
            "one NVIDIA H100 (5 data workers), from a plain effnetb3_bigru run (no PBC pretraining); the time box "
            "ended it at epoch 67"
        ),
    ),
}


def recipe_for(model: str, **overrides: Any) -> Recipe:
    """The model's recipe with the given fields replaced (``None`` values are ignored)."""
    base = RECIPES.get(model) or Recipe(kind="end2end", init_weights="random", epochs=30, lr=2e-3)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def describe(
    recipe: Recipe,
    *,
    input_size: int,
    sequence: str,
    init: str,
    views_used: list[str] | None = None,
    teacher: str | None = None,
    kd_weight: float = 0.5,
) -> str:
    """The recipe sentence of ``train_info.json`` and the model card, from the recipe's own numbers."""
    if recipe.kind == "cached":
        frozen = (
            f"CNN stage up to {recipe.finetune_after} frozen, blocks after it fine-tuned at 0.1x lr"
            if recipe.finetune_after
            else "frozen CNN stage"
        )
        return (
            f"{frozen} (weights {Path(init).name}); feature maps cached for training views "
            f"{', '.join(views_used or recipe.views.split(','))}; token projection + {sequence} + head trained "
            f"{recipe.epochs} epochs on the cache with random grid flips/90-degree rotations, AdamW lr {recipe.lr}, "
            f"wd 0.05, cosine, batch {recipe.batch_size}, seed {recipe.seed}; last epoch kept (no selection on "
            f"validation)"
        )
    text = (
        f"end to end from {init} init at {input_size}px with flips, rotations, crop jitter, HED/hue/"
        f"saturation/brightness/white-balance/grayscale augmentation, AdamW lr {recipe.lr}, cosine, "
        f"batch {recipe.batch_size}, seed {recipe.seed}, up to {recipe.epochs} epochs, "
        f"time box {recipe.max_minutes} min"
    )
    if teacher:
        text += f", distilled from {Path(teacher).name} soft labels (T=2, weight {kd_weight})"
    if recipe.pretrain_data:
        text += f"; CNN stage first pretrained {recipe.pretrain_epochs} epochs on {recipe.pretrain_data} cell types"
    return text


def training_order() -> list[str]:
    """The models in an order that trains each ``model:<name>`` initialisation before its user."""
    order: list[str] = []

    def visit(name: str) -> None:
        init = RECIPES[name].init_weights
        if init.startswith("model:") and init.removeprefix("model:") not in order:
            visit(init.removeprefix("model:"))
        if name not in order:
            order.append(name)

    for name in RECIPES:
        visit(name)
    return order


if __name__ == "__main__":  # `make train-all` reads the order from here
    print(" ".join(training_order()))
