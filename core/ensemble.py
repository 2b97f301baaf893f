"""The fitted ensemble of the frame models: one answer from the members' calibrated probabilities.

Parameters come from ``model_store/ensemble.json`` (written by ``make evaluate-ensemble``,
:mod:`training.ensemble`): the members with their versions and weights, the pooling method, the
temperature, the abstention threshold and the Benign threshold, fitted on the validation blocks.

Methods:

- ``log_linear_pool``: ``p ∝ exp(sum_m w_m log p_m / T)``: a weighted geometric mean of the members'
  calibrated probabilities (weights sum to 1), sharpened or softened by ``T``.
- ``linear_pool``: ``p ∝ (sum_m w_m p_m) ** (1 / T)``: the weighted mean, temperature-scaled.

Then the serving rule of every model (:func:`core.prediction.decide`): refer when the top probability
is under ``abstain_threshold`` or when the answer would be Benign with ``P(Benign)`` not above
``benign_threshold``.

Missing members (not finished, failed, refused, or answering with another version than the one the
ensemble was fitted on) are left out and the weights of the others renormalised to sum 1: both pools
are weighted means, so their scale, and with it ``T`` and the thresholds, keep their meaning; the
cost of one missing member was measured out of fold and is in the ensemble card. With fewer than
``min_members`` usable members the ensemble does not answer (:meth:`Ensemble.combine` returns None).
Torch- and numpy-free: the portal imports it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.paths import REPO
from core.prediction import decide

__all__ = [
    "ENSEMBLE_FILE",
    "ENSEMBLE_SCHEMA_VERSION",
    "METHODS",
    "EnsembleError",
    "EnsembleMember",
    "EnsembleAnswer",
    "Ensemble",
    "pool",
]

ENSEMBLE_FILE = REPO / "model_store" / "ensemble.json"
ENSEMBLE_SCHEMA_VERSION = 1
METHODS = ("log_linear_pool", "linear_pool")
_FLOOR = 1e-12  # probabilities are clipped here before the log (a member's exact 0)


class EnsembleError(ValueError):
    """ensemble.json is missing a field or has a wrong value."""


@dataclass(frozen=True)
class EnsembleMember:
    name: str
    version: str
    weight: float


@dataclass(frozen=True)
class EnsembleAnswer:
    """The ensemble's answer for one image (``label`` None: refer, ``abstain_reason`` says why)."""

    probabilities: dict[str, float]
    label: str | None
    class_index: int | None
    confidence: float
    malignant_probability: float
    abstained: bool
    abstain_reason: str | None
    members_used: tuple[str, ...]
    members_missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.members_missing


def pool(
    method: str, weights: Sequence[float], member_probs: Sequence[Sequence[float]], temperature: float
) -> list[float]:
    """Pooled, temperature-scaled probabilities of the members' probability rows (weights renormalised)."""
    if method not in METHODS:
        raise EnsembleError(f"unknown method {method!r}")
    total = float(sum(weights))
    if not member_probs or total <= 0:
        raise EnsembleError("no member with a positive weight")
    w = [float(x) / total for x in weights]
    n = len(member_probs[0])
    if method == "log_linear_pool":
        scores = [
            sum(wm * math.log(max(float(p[c]), _FLOOR)) for wm, p in zip(w, member_probs, strict=True))
            for c in range(n)
        ]
    else:
        scores = [
            math.log(max(sum(wm * float(p[c]) for wm, p in zip(w, member_probs, strict=True)), _FLOOR))
            for c in range(n)
        ]
    z = [s / temperature for s in scores]
    top = max(z)
    e = [math.exp(v - top) for v in z]
    s = sum(e)
    return [v / s for v in e]


@dataclass(frozen=True)
class Ensemble:
    version: str
    method: str
    classes: tuple[str, ...]
    members: tuple[EnsembleMember, ...]
    temperature: float
    abstain_threshold: float
    benign_threshold: float | None
    min_members: int
    benign_class: str = "Benign"

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Ensemble:
        try:
            if doc["schema_version"] != ENSEMBLE_SCHEMA_VERSION:
                raise EnsembleError(f"unsupported schema_version {doc['schema_version']}")
            members = tuple(
                EnsembleMember(str(m["name"]), str(m["version"]), float(m["weight"])) for m in doc["members"]
            )
            benign = doc.get("benign_threshold")
            ens = cls(
                version=str(doc["version"]),
                method=str(doc["method"]),
                classes=tuple(str(c) for c in doc["classes"]),
                members=members,
                temperature=float(doc["temperature"]),
                abstain_threshold=float(doc["abstain_threshold"]),
                benign_threshold=None if benign is None else float(benign),
                min_members=int(doc["min_members"]),
                benign_class=str(doc.get("benign_class", "Benign")),
            )
        except (KeyError, TypeError) as exc:
            raise EnsembleError(f"ensemble parameters lack or mistype {exc}") from None
        ens._check()
        return ens

    def _check(self) -> None:
        if self.method not in METHODS:
            raise EnsembleError(f"unknown method {self.method!r}")
        if not self.members or len({m.name for m in self.members}) != len(self.members):
            raise EnsembleError("members must be distinct and at least one")
        if any(not (m.weight >= 0 and math.isfinite(m.weight)) for m in self.members):
            raise EnsembleError("member weights must be finite and non-negative")
        if not self.temperature > 0:
            raise EnsembleError("temperature must be positive")
        if not 0.0 <= self.abstain_threshold <= 1.0:
            raise EnsembleError("abstain_threshold must be in [0, 1]")
        if self.benign_threshold is not None and not 0.0 <= self.benign_threshold <= 1.0:
            raise EnsembleError("benign_threshold must be in [0, 1]")
        if not 1 <= self.min_members <= len(self.members):
            raise EnsembleError("min_members must be between 1 and the number of members")
        if self.benign_class not in self.classes:
            raise EnsembleError(f"benign class {self.benign_class!r} is not a class")

    @classmethod
    def load(cls, path: str | Path = ENSEMBLE_FILE) -> Ensemble:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def combine(self, answers: Mapping[str, tuple[str, Mapping[str, float]]]) -> EnsembleAnswer | None:
        """The answer from ``{member name: (its version, its calibrated probabilities by class)}``.

        Members absent from ``answers``, answering with another version or without every class are
        left out (``members_missing``); None when fewer than ``min_members`` remain.
        """
        used: list[EnsembleMember] = []
        rows: list[list[float]] = []
        for m in self.members:
            got = answers.get(m.name)
            if got is None or got[0] != m.version or not all(c in got[1] for c in self.classes) or m.weight <= 0:
                continue
            used.append(m)
            rows.append([float(got[1][c]) for c in self.classes])
        if len(used) < self.min_members:
            return None
        probs = pool(self.method, [m.weight for m in used], rows, self.temperature)
        index, reason = decide(
            probs,
            self.classes,
            abstain_threshold=self.abstain_threshold,
            benign_threshold=self.benign_threshold,
            benign_class=self.benign_class,
        )
        names = {m.name for m in used}
        return EnsembleAnswer(
            probabilities=dict(zip(self.classes, probs, strict=True)),
            label=None if index is None else self.classes[index],
            class_index=index,
            confidence=max(probs),
            malignant_probability=1.0 - probs[self.classes.index(self.benign_class)],
            abstained=index is None,
            abstain_reason=reason,
            members_used=tuple(m.name for m in used),
            members_missing=tuple(m.name for m in self.members if m.name not in names),
        )
