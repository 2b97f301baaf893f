"""Consensus of several models' answers for one image: the fitted ensemble, else a majority vote.

The rules, in the order they apply (each has its own test in tests/portal/test_logic.py):

1. Nothing finished yet: no consensus (None).
2. A model refused the image (the smear gate said it is not a blood smear): refer, ``model_refused``.
   The others' answers are not pooled over a refusal.
3. A finished model abstained because the image is unlike anything it learned (``out_of_distribution``,
   its feature-density score beyond its threshold, :mod:`core.ood`): refer, ``out_of_distribution``.
   One model that does not recognise the image is enough to distrust the others' labels for it.
4. The fitted ensemble (``model_store/ensemble.json``, applied by :mod:`core.ensemble`), when its
   parameters are there and at least its ``min_members`` members finished with the version it was
   fitted on (a member that failed, is pending or answers another version is left out and the others'
   weights are renormalised; ``members_missing`` says which): it pools the members' calibrated
   probabilities with the weights, temperature, abstention threshold and Benign threshold fitted on the
   validation blocks (its card: ``model_store/ensemble.md``) and refers with its own reason
   (``low_confidence``, ``benign_not_confirmed``) where they say so. Those thresholds are kept as fitted.
5. No label from a minority: a label (the ensemble's, or the vote's without an ensemble) stands only if it
   is also the label of a strict majority of the finished models, abstentions counted against (of 4
   finished, 2 agreeing is no consensus whatever the other two said, 3 is); otherwise refer,
   ``no_majority``. The ensemble may still refer where the majority agrees (rule 4).
6. Without usable ensemble parameters (too few members, none fitted): the majority vote of rule 5 alone.

``reason`` carries the rule that referred; :attr:`Consensus.refer_text` says it in words (what the portal
shows and the API returns beside the code).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from core.ensemble import ENSEMBLE_FILE, Ensemble, EnsembleError
from core.prediction import BENIGN_NOT_CONFIRMED, LOW_CONFIDENCE, OUT_OF_DISTRIBUTION

__all__ = [
    "ENSEMBLE",
    "Answer",
    "MAJORITY",
    "MODEL_REFUSED",
    "NO_MAJORITY",
    "REFER_REASONS",
    "REFER_TEXTS",
    "Consensus",
    "consensus",
    "load_ensemble",
]

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
MAJORITY = "majority vote"
#: ``reason`` when the consensus refers: the ensemble's abstain reasons, a model's out-of-distribution
#: abstention, or these
NO_MAJORITY = "no_majority"
MODEL_REFUSED = "model_refused"
REFER_TEXTS = {
    LOW_CONFIDENCE: "the ensemble's confidence is under its threshold",
    BENIGN_NOT_CONFIRMED: "Benign is not confirmed: P(Benign) is under the safety threshold that no malignant "
    "validation frame passed",
    NO_MAJORITY: "no strict majority of the models gives the same label",
    MODEL_REFUSED: "a model refused the image",
    OUT_OF_DISTRIBUTION: "the image is unlike the images a model learned from (out of distribution)",
}
REFER_REASONS = tuple(REFER_TEXTS)


class _Answer(Protocol):
    status: str
    label: str
    abstained: bool
    malignant_probability: float | None
    probabilities: Mapping[str, float]
    model_name: str
    model_version: str
    abstain_reason: str


@dataclass
class Answer:
    """One model's answer as plain data, for a caller without the database (a measurement script, a
    test against the served models); the portal passes its Analysis rows."""

    status: str
    label: str
    abstained: bool
    malignant_probability: float | None
    probabilities: Mapping[str, float]
    model_name: str
    model_version: str
    abstain_reason: str


@dataclass(frozen=True)
class Consensus:
    label: str | None  # None: no consensus -> refer for manual review
    votes: dict[str, int]
    answered: int  # models that finished (done), abstentions included
    abstained: int
    mean_malignant_probability: float | None
    method: str = MAJORITY  # ENSEMBLE or MAJORITY
    #: why the consensus refers (None when it answers): one of REFER_REASONS
    reason: str | None = None
    probabilities: dict[str, float] | None = None  # the ensemble's (None for a majority vote)
    malignant_probability: float | None = None  # the ensemble's 1 - P(Benign)
    members_used: tuple[str, ...] = ()
    members_missing: tuple[str, ...] = field(default=())
    ensemble_version: str | None = None

    @property
    def refer(self) -> bool:
        return self.label is None

    @property
    def benign_confirmed(self) -> bool:
        """Benign, and by the ensemble: its P(Benign) cleared the Benign threshold."""
        return self.method == ENSEMBLE and self.label == "Benign"

    @property
    def refer_text(self) -> str:
        """Why the consensus refers the image, in words (empty when it answers)."""
        if self.label is not None:
            return ""
        return REFER_TEXTS.get(self.reason or "", "no consensus")

    @property
    def agreement(self) -> str:
        if self.label is None:
            return "no consensus"
        return f"{self.votes.get(self.label, 0)} of {self.answered}"


@lru_cache(maxsize=1)
def load_ensemble() -> Ensemble | None:
    """The shipped ensemble parameters, or None (with a warning) when they are absent or invalid."""
    try:
        return Ensemble.load(ENSEMBLE_FILE)
    except FileNotFoundError:
        log.warning("no ensemble parameters at %s: consensus by majority vote", ENSEMBLE_FILE)
    except (EnsembleError, ValueError) as exc:
        log.warning("invalid ensemble parameters at %s (%s): consensus by majority vote", ENSEMBLE_FILE, exc)
    return None


_DEFAULT: Any = object()


def _majority(votes: Counter[str], done: int, label: str | None = None) -> str | None:
    """``label`` (default: the most voted) when a strict majority of the ``done`` models gave it, else None."""
    if not votes:
        return None
    label = label or votes.most_common(1)[0][0]
    return label if votes.get(label, 0) * 2 > done else None


def consensus(analyses: Iterable[_Answer], ensemble: Ensemble | None = _DEFAULT) -> Consensus | None:
    """The consensus of the finished analyses by the rules of the module docstring; None when nothing has
    finished. ``ensemble``: default the shipped one; None forces the majority vote."""
    rows = list(analyses)
    done = [a for a in rows if a.status == "done"]
    if not done:
        return None
    votes = Counter(a.label for a in done if not a.abstained and a.label)
    abstained = sum(1 for a in done if a.abstained)
    probs = [a.malignant_probability for a in done if a.malignant_probability is not None]
    common: dict[str, Any] = {
        "votes": dict(votes),
        "answered": len(done),
        "abstained": abstained,
        "mean_malignant_probability": sum(probs) / len(probs) if probs else None,
    }
    if any(a.status == "rejected" for a in rows):
        return Consensus(label=None, reason=MODEL_REFUSED, **common)
    if any(a.abstained and getattr(a, "abstain_reason", "") == OUT_OF_DISTRIBUTION for a in done):
        return Consensus(label=None, reason=OUT_OF_DISTRIBUTION, **common)
    ens = load_ensemble() if ensemble is _DEFAULT else ensemble
    members = {a.model_name: (a.model_version, a.probabilities) for a in done if a.probabilities and a.model_name}
    if ens is not None and (answer := ens.combine(members)) is not None:
        label, reason = answer.label, answer.abstain_reason
        if label is not None and _majority(votes, len(done), label) is None:
            label, reason = None, NO_MAJORITY
        return Consensus(
            label=label,
            method=ENSEMBLE,
            reason=reason,
            probabilities=answer.probabilities,
            malignant_probability=answer.malignant_probability,
            members_used=answer.members_used,
            members_missing=answer.members_missing,
            ensemble_version=ens.version,
            **common,
        )
    label = _majority(votes, len(done))
    return Consensus(label=label, reason=None if label else NO_MAJORITY, **common)
