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
5. No label from a minority: a label (the ensemble's, or the vote's without an ensemble) stands only if a
   strict majority of the finished models ranks it first and at least two of them answered it
   (:data:`MIN_ANSWERED`; one, when a single model has finished). A model ranks first the label it answered,
   or, when it abstained under its own thresholds (``low_confidence``, ``benign_not_confirmed``), its most
   probable class: it stands behind that class without being sure enough to answer it. Of 4 finished: 2
   answering a label and the other two ranking other classes first is no consensus, whatever they are; 2
   answering it and a third ranking it first under its threshold is (3 of 4); 1 answering it is not, however
   many rank it first. Otherwise refer, ``no_majority``. The ensemble may still refer where the majority
   agrees (rule 4). Counting the abstainers' first class, not only answers, is measured in docs/ood.md
   (validation coverage, and what it adds on other labs' images were the out-of-distribution rule absent).
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
    "MIN_ANSWERED",
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
    NO_MAJORITY: "no strict majority of the models ranks the same label first with at least two of them answering it",
    MODEL_REFUSED: "a model refused the image",
    OUT_OF_DISTRIBUTION: "the image is unlike the images a model learned from (out of distribution)",
}
REFER_REASONS = tuple(REFER_TEXTS)
#: rule 5: how many of the models that rank a label first must have answered it (not abstained)
MIN_ANSWERED = 2


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
    votes: dict[str, int]  # labels the finished models answered
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
    #: the class each finished model ranks first (its answer, or an abstainer's most probable class; rule 5)
    ranked_first: dict[str, int] = field(default_factory=dict)

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
        """How many finished models rank the label first: '3 of 4', '3 of 4, 1 of them abstaining' (rule 5)."""
        if self.label is None:
            return "no consensus"
        first, answered = self.ranked_first.get(self.label, 0), self.votes.get(self.label, 0)
        text = f"{max(first, answered)} of {self.answered}"
        return text + (f", {first - answered} of them abstaining" if first > answered else "")


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


def _first(a: _Answer) -> str:
    """The class a finished model ranks first: its label, or, when it abstained under its own thresholds, its most
    probable class ("" when it has none)."""
    if not a.abstained:
        return a.label
    if a.abstain_reason == OUT_OF_DISTRIBUTION or not a.probabilities:
        return ""
    return max(a.probabilities, key=lambda c: float(a.probabilities[c]))


def _majority(votes: Counter[str], first: Counter[str], done: int, label: str | None = None) -> str | None:
    """``label`` (default: the class most models rank first) when rule 5 lets it stand, else None: a strict
    majority of the ``done`` models rank it first and :data:`MIN_ANSWERED` of them answered it (``votes``)."""
    if not first:
        return None
    label = label or first.most_common(1)[0][0]
    if first.get(label, 0) * 2 > done and votes.get(label, 0) >= min(MIN_ANSWERED, done // 2 + 1):
        return label
    return None


def consensus(
    analyses: Iterable[_Answer], ensemble: Ensemble | None = _DEFAULT, rank_abstainers: bool = True
) -> Consensus | None:
    """The consensus of the finished analyses by the rules of the module docstring; None when nothing has
    finished. ``ensemble``: default the shipped one; None forces the majority vote. ``rank_abstainers=False``:
    rule 5 counts answers only (the earlier rule, kept to measure what counting the abstainers changes)."""
    rows = list(analyses)
    done = [a for a in rows if a.status == "done"]
    if not done:
        return None
    votes = Counter(a.label for a in done if not a.abstained and a.label)
    first = Counter(c for c in map(_first, done) if c) if rank_abstainers else Counter(votes)
    abstained = sum(1 for a in done if a.abstained)
    probs = [a.malignant_probability for a in done if a.malignant_probability is not None]
    common: dict[str, Any] = {
        "votes": dict(votes),
        "ranked_first": dict(first),
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
        if label is not None and _majority(votes, first, len(done), label) is None:
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
    label = _majority(votes, first, len(done))
    return Consensus(label=label, reason=None if label else NO_MAJORITY, **common)
