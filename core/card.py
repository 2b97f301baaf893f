"""The model card's schema: the JSON shipped inside each .mar (``model_card.json``), validated here.

The card is the serving-side source of truth for everything that is fitted rather than designed:
temperature, abstention threshold, smear-gate parameters, metrics. Building and rendering cards is
training's job (:mod:`training.card`); checking one needs nothing but this module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CARD_FILE",
    "CARD_SCHEMA_VERSION",
    "REQUIRED_KEYS",
    "CardError",
    "check_card_matches",
    "read_card",
    "require_gate",
    "validate_card",
]

#: the card's file name in a model directory as TorchServe unpacks a .mar
CARD_FILE = "model_card.json"

CARD_SCHEMA_VERSION = 1

#: key -> type every card must carry (nested content is checked by validate_card).
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "name": str,
    "version": str,
    "architecture": dict,  # backbone, sequence, parameters
    "input_size": int,
    "mean": list,
    "std": list,
    "interpolation": str,
    "classes": list,
    "stain_normalization": (str, type(None)),
    "temperature": (int, float),
    "abstain_threshold": (int, float),
    "smear_gate": dict,  # thresholds and statistics used by the handler's gate
    "init_weights": dict,  # source, path/hub name, sha256
    "training": dict,  # data (manifest hash, split rule), recipe, wall time, hardware
    "metrics": dict,  # validation metrics, perturbations, calibration, coverage
    "intended_use": str,
    "limitations": list,
}


class CardError(ValueError):
    """A model card is missing a field or has a wrong value."""


def validate_card(card: dict[str, Any]) -> dict[str, Any]:
    """Raise :class:`CardError` if ``card`` is not a valid model card; return it unchanged."""
    if not isinstance(card, dict):
        raise CardError("model card must be a JSON object")
    for key, typ in REQUIRED_KEYS.items():
        if key not in card:
            raise CardError(f"model card lacks {key!r}")
        if not isinstance(card[key], typ) or (typ is int and isinstance(card[key], bool)):
            raise CardError(f"model card field {key!r} has type {type(card[key]).__name__}")
    if card["schema_version"] != CARD_SCHEMA_VERSION:
        raise CardError(f"unsupported card schema_version {card['schema_version']}")
    if not card["classes"] or not all(isinstance(c, str) for c in card["classes"]):
        raise CardError("classes must be a non-empty list of names")
    for key in ("mean", "std"):
        if len(card[key]) != 3 or not all(isinstance(v, (int, float)) for v in card[key]):
            raise CardError(f"{key} must be three numbers")
    if any(v <= 0 for v in card["std"]):
        raise CardError("std must be positive")
    if card["input_size"] < 32:
        raise CardError("input_size must be at least 32")
    if not card["temperature"] > 0:
        raise CardError("temperature must be positive")
    if not 0.0 <= card["abstain_threshold"] <= 1.0:
        raise CardError("abstain_threshold must be in [0, 1]")
    benign = card.get("benign_threshold")  # optional: the Benign operating point (core.prediction.decide)
    if benign is not None and (
        isinstance(benign, bool) or not isinstance(benign, (int, float)) or not 0.0 <= benign <= 1.0
    ):
        raise CardError("benign_threshold must be a number in [0, 1] (or absent)")
    ood = card.get("ood")  # optional: the out-of-distribution score (core.ood); the shipped cards all carry one
    if ood is not None:
        from core.ood import OODError, OODScorer

        try:
            OODScorer.from_dict(ood)
        except OODError as exc:
            raise CardError(f"ood: {exc}") from None
    return card


def require_gate(card: dict[str, Any]) -> dict[str, Any]:
    """Raise :class:`CardError` unless ``card`` carries a fitted smear gate; return it unchanged.

    The gate decides what the model may label at all, so it fails closed: a model without one is
    neither archived nor loaded (an empty ``smear_gate`` is allowed only while a card is being built).
    """
    gate = card.get("smear_gate") or {}
    missing = [k for k in ("kind", "threshold", "coef", "intercept") if k not in gate]
    if missing:
        raise CardError(f"model {card.get('name')!r} has no valid smear gate (missing {', '.join(missing)})")
    return card


def read_card(model_dir: str | Path) -> dict[str, Any]:
    """The validated card of an unpacked model directory; fails closed without a fitted smear gate."""
    return require_gate(validate_card(json.loads((Path(model_dir) / CARD_FILE).read_text())))


def check_card_matches(
    card: dict[str, Any],
    *,
    name: str,
    classes: Sequence[str],
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> None:
    """Raise ValueError when the card disagrees with the loaded model's own configuration."""
    problems = []
    if card["name"] != name:
        problems.append(f"name {card['name']!r} != {name!r}")
    if list(card["classes"]) != list(classes):
        problems.append("classes differ")
    if card["input_size"] != input_size:
        problems.append("input_size differs")
    for key, ours in (("mean", mean), ("std", std)):
        if any(abs(a - b) > 1e-6 for a, b in zip(card[key], ours, strict=True)):
            problems.append(f"{key} differs")
    if problems:
        raise ValueError(f"model card does not match the model's config: {'; '.join(problems)}")
