"""training.recipes: every frame model has its recipe, and it is the recipe its shipped card states."""

from __future__ import annotations

import json
import re

import pytest

from core.registry import get_spec, model_names
from tests.conftest import REPO
from training.recipes import RECIPES, describe, recipe_for
from training.train import main as train_main


def test_every_frame_model_has_a_recipe() -> None:
    assert set(RECIPES) == set(model_names())


@pytest.mark.parametrize("model", model_names())
def test_the_recipe_renders_the_shipped_cards_recipe(model: str) -> None:
    """The numbers in the committed card's recipe sentence are the recipe's (init path aside: it names the run)."""
    card = json.loads((REPO / "model_store" / f"{model}.card.json").read_text())
    shipped = card["training"]["recipe"]
    recipe, spec = RECIPES[model], get_spec(model)
    if recipe.kind == "cached":
        init = re.search(r"\(weights ([^)]+)\)", shipped).group(1)  # type: ignore[union-attr]
        views = re.search(r"training views (.+?); ", shipped).group(1).split(", ")  # type: ignore[union-attr]
        text = describe(recipe, input_size=spec.input_size, sequence=spec.sequence.kind, init=init, views_used=views)
    else:
        init = re.match(r"end to end from (.+?) init at", shipped).group(1)  # type: ignore[union-attr]
        text = describe(recipe, input_size=spec.input_size, sequence=spec.sequence.kind, init=init)
    assert text == shipped


def test_command_line_overrides_only_what_it_names() -> None:
    base = RECIPES["mobilenetv3_lstm"]
    r = recipe_for("mobilenetv3_lstm", epochs=3, lr=None, max_minutes=None)
    assert r.epochs == 3 and r.lr == base.lr and r.max_minutes == base.max_minutes
    assert recipe_for("effnetb3_vit").init_path("arts") == "arts/effnetb3_bigru/model"


def test_unknown_model_is_refused() -> None:
    with pytest.raises(KeyError, match="unknown model"):
        train_main(["--model", "no_such_model", "--epochs", "1"])
