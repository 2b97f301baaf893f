"""From logits to the public prediction JSON (DESIGN.md section 5).

Probabilities are the temperature-scaled softmax ``softmax(logits / T)`` with ``T`` from the model
card. ``abstained`` is true when the top calibrated probability is under the card's
``abstain_threshold``; an abstained result carries ``label: null`` ("refer for manual review"),
never a forced label, but still reports the probabilities. ``malignant_probability`` is
``1 - P(Benign)`` (the three other classes are B-ALL subtypes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["NOTICE", "ABSTAIN_MESSAGE", "calibrated_probabilities", "build_prediction"]

NOTICE = "Decision support only, not a diagnosis: a qualified reviewer must confirm or reclassify every result."
ABSTAIN_MESSAGE = "Confidence under the model's threshold: refer for manual review."


def calibrated_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature-scaled softmax over the last dimension, in float32."""
    if not temperature > 0:
        raise ValueError("temperature must be positive")
    return torch.softmax(logits.float() / float(temperature), dim=-1)


def build_prediction(
    probabilities: Sequence[float],
    *,
    classes: Sequence[str],
    model: str,
    version: str,
    abstain_threshold: float,
    benign_class: str = "Benign",
    quality: Mapping[str, Any] | None = None,
    timing_ms: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The success body for one image."""
    if len(probabilities) != len(classes):
        raise ValueError(f"{len(probabilities)} probabilities for {len(classes)} classes")
    probs = [float(p) for p in probabilities]
    top = max(range(len(probs)), key=probs.__getitem__)
    confidence = probs[top]
    abstained = confidence < float(abstain_threshold)
    benign = probs[list(classes).index(benign_class)]
    result: dict[str, Any] = {
        "model": model,
        "version": version,
        "label": None if abstained else classes[top],
        "class_index": None if abstained else top,
        "confidence": confidence,
        "probabilities": dict(zip(classes, probs, strict=True)),
        "malignant_probability": 1.0 - benign,
        "abstained": abstained,
        "abstain_threshold": float(abstain_threshold),
        "quality": dict(quality or {}),
        "timing_ms": {k: round(float(v), 3) for k, v in (timing_ms or {}).items()},
        "notice": NOTICE,
    }
    if abstained:
        result["message"] = ABSTAIN_MESSAGE
    return result
