"""The public prediction body (docs/serving.md): label, abstention, probabilities, notice.

``abstained`` is true when the top calibrated probability is under the card's ``abstain_threshold``;
an abstained result carries ``label: null`` ("refer for manual review"), never a forced label, but
still reports the probabilities. ``malignant_probability`` is ``1 - P(Benign)`` (the three other
classes are B-ALL subtypes). The same body answers ``/predictions`` and, with the heatmap fields
(:data:`EXPLANATION_KEYS`), ``/explanations``; the portal reads it with these keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ABSTAIN_MESSAGE", "EXPLANATION_KEYS", "NOTICE", "PREDICTION_KEYS", "build_prediction"]

NOTICE = "Decision support only, not a diagnosis: a qualified reviewer must confirm or reclassify every result."
ABSTAIN_MESSAGE = "Confidence under the model's threshold: refer for manual review."
#: Keys of every success body (``message`` is added when the model abstains).
PREDICTION_KEYS = frozenset(
    {
        "model",
        "version",
        "label",
        "class_index",
        "confidence",
        "probabilities",
        "malignant_probability",
        "abstained",
        "abstain_threshold",
        "quality",
        "timing_ms",
        "notice",
    }
)
#: Keys an explanation adds to the prediction body.
EXPLANATION_KEYS = frozenset({"explained_class", "method", "layer", "grid", "grid_shape", "overlay_png_base64"})


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
