"""The public prediction body (docs/guides/serving.md): label, abstention, probabilities, notice.

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
from dataclasses import dataclass
from typing import Any

from core import contract as c

__all__ = [
    "ABSTAIN_MESSAGE",
    "ABSTAIN_MESSAGES",
    "ABSTAIN_REASONS",
    "BENIGN_NOT_CONFIRMED",
    "EXPLANATION_KEYS",
    "Explanation",
    "FramePrediction",
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


@dataclass
class Explanation:
    """The Grad-CAM fields ``/explanations`` adds (``grid`` and ``overlay_png_base64`` may be dropped by a
    reader that keeps only the overlay's bytes, as the portal does: None, then absent from :meth:`to_json`)."""

    explained_class: str
    method: str
    layer: str
    grid_shape: list[int]
    grid: list[list[float]] | None = None
    overlay_png_base64: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"explained_class": self.explained_class, "method": self.method, "layer": self.layer}
        if self.grid is not None:
            out["grid"] = self.grid
        out["grid_shape"] = self.grid_shape
        if self.overlay_png_base64 is not None:
            out["overlay_png_base64"] = self.overlay_png_base64
        return out

    @classmethod
    def parse(cls, body: Mapping[str, Any], where: str = "answer") -> Explanation | None:
        """The explanation fields of an answer, None when it has none (a ``/predictions`` answer)."""
        if "explained_class" not in body:
            return None
        grid = body.get("grid")
        if grid is not None and not (isinstance(grid, list) and all(isinstance(row, list) for row in grid)):
            raise c.ContractError(f"{where}: 'grid' should be a list of rows of numbers")
        return cls(
            explained_class=c.text(body, "explained_class", where),
            method=c.text(body, "method", where),
            layer=c.text(body, "layer", where),
            grid_shape=c.int_list(body, "grid_shape", where, length=2),
            grid=grid,
            overlay_png_base64=c.optional_text(body, "overlay_png_base64", where, required=False),
        )


@dataclass
class FramePrediction:
    """A frame classifier's success body (:data:`PREDICTION_KEYS`, plus ``message`` when it abstains, the
    explanation's fields on ``/explanations``, and ``batch_size`` and ``runtime``, which the handler sets).

    An answer (``abstained`` false: ``label``, ``class_index`` set, ``abstain_reason`` null) and an
    abstention (``abstained`` true: ``label`` and ``class_index`` null, ``abstain_reason`` one of
    :data:`ABSTAIN_REASONS`, ``message`` its text) are the two forms; a refusal is not a prediction but a
    :class:`core.errors.RequestError` (``{"code", "message"}``, 4xx; ``to_dict`` / ``from_json``).
    :meth:`build` decides, :meth:`to_json` writes the public JSON (docs/guides/serving.md), :meth:`parse` reads
    one back and checks it.
    """

    model: str
    version: str
    label: str | None
    class_index: int | None
    confidence: float
    probabilities: dict[str, float]
    malignant_probability: float
    abstained: bool
    abstain_reason: str | None
    abstain_threshold: float
    benign_threshold: float | None
    quality: dict[str, Any]
    timing_ms: dict[str, float]
    notice: str = NOTICE
    message: str | None = None
    explanation: Explanation | None = None
    batch_size: int | None = None
    runtime: str | None = None

    @classmethod
    def build(
        cls,
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
    ) -> FramePrediction:
        """The prediction for one image (``out_of_distribution``: the model's score said the image is unlike
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
        benign = probs[list(classes).index(benign_class)]
        return cls(
            model=model,
            version=version,
            label=None if answer is None else classes[answer],
            class_index=answer,
            confidence=max(probs),
            probabilities=dict(zip(classes, probs, strict=True)),
            malignant_probability=1.0 - benign,
            abstained=answer is None,
            abstain_reason=reason,
            abstain_threshold=float(abstain_threshold),
            benign_threshold=None if benign_threshold is None else float(benign_threshold),
            quality=dict(quality or {}),
            timing_ms={k: round(float(v), 3) for k, v in (timing_ms or {}).items()},
            message=None if reason is None else ABSTAIN_MESSAGES[reason],
        )

    def to_json(self) -> dict[str, Any]:
        """The public JSON body, keys in the contract's order."""
        out: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "label": self.label,
            "class_index": self.class_index,
            "confidence": self.confidence,
            "probabilities": dict(self.probabilities),
            "malignant_probability": self.malignant_probability,
            "abstained": self.abstained,
            "abstain_reason": self.abstain_reason,
            "abstain_threshold": self.abstain_threshold,
            "benign_threshold": self.benign_threshold,
            "quality": dict(self.quality),
            "timing_ms": dict(self.timing_ms),
            "notice": self.notice,
        }
        if self.message is not None:
            out["message"] = self.message
        if self.explanation is not None:
            out.update(self.explanation.to_json())
        if self.batch_size is not None:
            out["batch_size"] = self.batch_size
        if self.runtime is not None:
            out["runtime"] = self.runtime
        return out

    @classmethod
    def parse(cls, body: Any, classes: Sequence[str] | None = None) -> FramePrediction:
        """A model server's JSON body as a prediction; :class:`~core.contract.ContractError` naming the field
        when it breaks the contract (``classes``: the labels it may give; keys it does not know are ignored)."""
        where = "answer"
        body = c.obj(body, where)
        probabilities = c.number_map(body, "probabilities", where)
        if not probabilities:
            raise c.ContractError(f"{where}: 'probabilities' is empty")
        if classes is not None and set(probabilities) != set(classes):
            raise c.ContractError(f"{where}: 'probabilities' names {sorted(probabilities)}, not {sorted(classes)}")
        label = c.optional_text(body, "label", where)
        class_index = c.optional_integer(body, "class_index", where)
        abstained = c.boolean(body, "abstained", where)
        reason = c.optional_text(body, "abstain_reason", where)
        if label is not None and label not in probabilities:
            raise c.ContractError(f"{where}: label {label!r} is not one of its probabilities' classes")
        if abstained != (label is None) or abstained != (reason is not None) or abstained != (class_index is None):
            raise c.ContractError(
                f"{where}: abstained {abstained} with label {label!r}, class_index {class_index!r} and "
                f"abstain_reason {reason!r} (an abstention has no label and a reason, an answer the reverse)"
            )
        if reason is not None and reason not in ABSTAIN_REASONS:
            raise c.ContractError(f"{where}: unknown abstain_reason {reason!r}; known: {', '.join(ABSTAIN_REASONS)}")
        return cls(
            model=c.text(body, "model", where),
            version=c.text(body, "version", where),
            label=label,
            class_index=class_index,
            confidence=c.number(body, "confidence", where),
            probabilities=probabilities,
            malignant_probability=c.number(body, "malignant_probability", where),
            abstained=abstained,
            abstain_reason=reason,
            abstain_threshold=c.number(body, "abstain_threshold", where),
            benign_threshold=c.optional_number(body, "benign_threshold", where),
            quality=c.json_object(body, "quality", where),
            timing_ms=c.number_map(body, "timing_ms", where),
            notice=c.text(body, "notice", where),
            message=c.optional_text(body, "message", where, required=False),
            explanation=Explanation.parse(body, where),
            batch_size=c.optional_integer(body, "batch_size", where, required=False),
            runtime=c.optional_text(body, "runtime", where, required=False),
        )


def build_prediction(probabilities: Sequence[float], **options: Any) -> dict[str, Any]:
    """:meth:`FramePrediction.build` (same arguments) written as its JSON body."""
    return FramePrediction.build(probabilities, **options).to_json()
