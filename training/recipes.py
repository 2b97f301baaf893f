"""Each frame model's training recipe (its numbers are the manifest's, :mod:`core.manifest`).

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

from core import manifest

__all__ = ["XCEPTION_WEIGHTS", "Recipe", "RECIPES", "recipe_for", "describe", "training_order"]


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


#: Each frame model's recipe: its ``recipe`` in the manifest (core.manifest), where its numbers live.
RECIPES: dict[str, Recipe] = {e.name: Recipe(**e.recipe) for e in manifest.entries("frame") if e.recipe is not None}
XCEPTION_WEIGHTS = Path(RECIPES["xception_bigru"].init_weights)


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
