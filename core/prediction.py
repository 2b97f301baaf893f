"""The public prediction body (docs/serving.md): label, abstention, probabilities, notice.

``abstained`` is true when the image is unlike anything the model learned (``abstain_reason:
"out_of_distribution"``: its out-of-distribution score on the model's own features is beyond the card's
threshold, :mod:`core.ood`; the score and threshold are in ``quality``; checked first, since a model's
probabilities mean nothing there), when the top calibrated probability is under the card's ``abstain_threshold``
(``"low_confidence"``), or when the top class is Benign but ``P(Benign)`` is not above
the card's ``benign_threshold`` (``"benign_not_confirmed"``: the Benign safety operating point, the
highest ``P(Benign)`` any malignant validation frame reached; cards without it keep the confidence rule
alone). An abstained result carries ``label: null`` ("refer for manual review"), never a forced label,
but still reports the probabilities. ``malignant_probability`` is ``1 - P(Benign)`` (the three other
classes are B-ALL subtypes). The same body answers ``/predictions`` and, with the heatmap fields
(:data:`EXPLANATION_KEYS`), ``/explanations``; the portal reads it with these keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ABSTAIN_MESSAGE",
    "ABSTAIN_MESSAGES",
    "ABSTAIN_REASONS",
    "BENIGN_NOT_CONFIRMED",
    "EXPLANATION_KEYS",
    "LOW_CONFIDENCE",
    "NOTICE",
    "OUT_OF_DISTRIBUTION",
    "PREDICTION_KEYS",
    "build_prediction",
    "decide",
]

NOTICE = "Decision support only, not a diagnosis: a qualified reviewer must confirm or reclassify every result."
ABSTAIN_MESSAGE = "Confidence under the model's threshold: refer for manual review."
#: ``abstain_reason`` values: the top probability is under ``abstain_threshold`` / the answer would be
#: Benign but P(Benign) is not above ``benign_threshold``.
LOW_CONFIDENCE = "low_confidence"
BENIGN_NOT_CONFIRMED = "benign_not_confirmed"
#: the image's features are beyond the model's out-of-distribution threshold (core.ood)
OUT_OF_DISTRIBUTION = "out_of_distribution"
ABSTAIN_REASONS = (LOW_CONFIDENCE, BENIGN_NOT_CONFIRMED, OUT_OF_DISTRIBUTION)
ABSTAIN_MESSAGES = {
    LOW_CONFIDENCE: ABSTAIN_MESSAGE,
    OUT_OF_DISTRIBUTION: (
        "The image is unlike the images the model learned from (out of distribution: another lab, stain, camera "
        "or magnification?): no label, refer for manual review."
    ),
    BENIGN_NOT_CONFIRMED: (
        "Most probably Benign, but P(Benign) is under the threshold that no malignant validation frame "
        "exceeded: Benign not confirmed, refer for manual review."
    ),
}
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
        "abstain_reason",
        "abstain_threshold",
        "benign_threshold",
        "quality",
        "timing_ms",
        "notice",
    }
)
#: Keys an explanation adds to the prediction body.
EXPLANATION_KEYS = frozenset({"explained_class", "method", "layer", "grid", "grid_shape", "overlay_png_base64"})


def decide(
    probabilities: Sequence[float],
    classes: Sequence[str],
    *,
    abstain_threshold: float,
    benign_threshold: float | None = None,
    benign_class: str = "Benign",
) -> tuple[int | None, str | None]:
    """(index of the answered class, None) or (None, abstain reason) for one set of probabilities.

    Refer (``low_confidence``) when the top probability is under ``abstain_threshold``; refer
    (``benign_not_confirmed``) when the top class is ``benign_class`` and its probability is not
    above ``benign_threshold`` (None: no Benign operating point, the confidence rule alone).
    """
    probs = [float(p) for p in probabilities]
    top = max(range(len(probs)), key=probs.__getitem__)
    if probs[top] < float(abstain_threshold):
        return None, LOW_CONFIDENCE
    if benign_threshold is not None and classes[top] == benign_class and not probs[top] > float(benign_threshold):
        return None, BENIGN_NOT_CONFIRMED
    return top, None


def build_prediction(
    probabilities: Sequence[float],
    *,
    classes: Sequence[str],
    model: str,
    version: str,
    abstain_threshold: float,
    benign_threshold: float | None = None,
    benign_class: str = "Benign",
    quality: Mapping[str, Any] | None = None,
    timing_ms: Mapping[str, float] | None = None,
    out_of_distribution: bool = False,
) -> dict[str, Any]:
    """The success body for one image (``out_of_distribution``: the model's score said the image is unlike
    what it learned, so it abstains with that reason whatever its probabilities)."""
    if len(probabilities) != len(classes):
        raise ValueError(f"{len(probabilities)} probabilities for {len(classes)} classes")
    probs = [float(p) for p in probabilities]
    answer, reason = decide(
        probs,
        classes,
        abstain_threshold=abstain_threshold,
        benign_threshold=benign_threshold,
        benign_class=benign_class,
    )
    if out_of_distribution:
        answer, reason = None, OUT_OF_DISTRIBUTION
    abstained = answer is None
    benign = probs[list(classes).index(benign_class)]
    result: dict[str, Any] = {
        "model": model,
        "version": version,
        "label": None if answer is None else classes[answer],
        "class_index": answer,
        "confidence": max(probs),
        "probabilities": dict(zip(classes, probs, strict=True)),
        "malignant_probability": 1.0 - benign,
        "abstained": abstained,
        "abstain_reason": reason,
        "abstain_threshold": float(abstain_threshold),
        "benign_threshold": None if benign_threshold is None else float(benign_threshold),
        "quality": dict(quality or {}),
        "timing_ms": {k: round(float(v), 3) for k, v in (timing_ms or {}).items()},
        "notice": NOTICE,
    }
    if reason is not None:
        result["message"] = ABSTAIN_MESSAGES[reason]
    return result
