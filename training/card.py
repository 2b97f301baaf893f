"""Model cards: the JSON shipped inside each .mar (``model_card.json``) and its Markdown rendering.

The card is the serving-side source of truth for everything that is fitted rather than designed:
temperature, abstention threshold, smear-gate thresholds, metrics. Architecture, input size,
normalisation and classes are copied into it from the registry when the card is built.
"""

from __future__ import annotations

from typing import Any

from training.registry import ModelSpec

__all__ = ["CARD_SCHEMA_VERSION", "REQUIRED_KEYS", "CardError", "base_card", "validate_card"]

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


def base_card(spec: ModelSpec, parameters: int, init_weights: dict[str, Any]) -> dict[str, Any]:
    """The registry-derived part of a card, with neutral calibration values to be overwritten."""
    cfg = spec.data_config()
    return {
        "schema_version": CARD_SCHEMA_VERSION,
        "name": spec.name,
        "version": spec.version,
        "architecture": {
            "backbone": spec.backbone,
            "pretrained_config": spec.timm_name,
            "sequence": spec.to_dict()["sequence"],
            "token_dim": spec.token_dim,
            "parameters": parameters,
        },
        "input_size": spec.input_size,
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "interpolation": cfg["interpolation"],
        "classes": list(spec.classes),
        "stain_normalization": spec.stain_normalization,
        "temperature": 1.0,
        "abstain_threshold": 0.0,
        "smear_gate": {},
        "init_weights": dict(init_weights),
        "training": {},
        "metrics": {},
        "intended_use": (
            "Decision support for trained haematology laboratory staff: a pre-classification of a "
            "Giemsa-stained peripheral blood smear field of view as Benign (hematogones), Early Pre-B, "
            "Pre-B or Pro-B ALL, to be confirmed or reclassified by a qualified reviewer. Not a diagnosis."
        ),
        "limitations": [
            "Trained on one public data set from one hospital (Taleqani Hospital, Tehran); not clinically validated.",
            "Class is confounded with acquisition colour in the training data; see the perturbation metrics.",
            "Training frames are 4:3 microscope frames squashed to a square; inputs are resized the same way.",
            "Decision support only: every result must be reviewed and signed off by qualified staff.",
        ],
    }


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
    return card
