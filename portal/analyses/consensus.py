"""Consensus of several models' answers for one image: the fitted ensemble, else a majority vote.

The ensemble (``model_store/ensemble.json``, applied by :mod:`core.ensemble`) pools the finished
members' calibrated probabilities with weights, a temperature, an abstention threshold and a Benign
threshold fitted on the validation blocks (its card: ``model_store/ensemble.md``). It is used when its
parameters are there and at least its ``min_members`` members finished with the version it was
fitted on; a member that failed, is still pending, or answers with another version is left out and
the others' weights are renormalised (``members_missing`` says which). When a model refused the image
(the smear gate said it is not a blood smear), the consensus refers it: the others' answers are not
pooled over a refusal. Without usable ensemble parameters (too few members, none fitted) it falls back
to the majority vote of the models' labels.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from core.ensemble import ENSEMBLE_FILE, Ensemble, EnsembleError
from core.prediction import BENIGN_NOT_CONFIRMED, LOW_CONFIDENCE

__all__ = ["ENSEMBLE", "MAJORITY", "Consensus", "consensus", "load_ensemble"]

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
MAJORITY = "majority vote"
#: ``reason`` when the consensus refers: the ensemble's abstain reasons, or these
NO_MAJORITY = "no_majority"
MODEL_REFUSED = "model_refused"
REFER_TEXTS = {
    LOW_CONFIDENCE: "the ensemble's confidence is under its threshold",
    BENIGN_NOT_CONFIRMED: "Benign is not confirmed: P(Benign) is under the safety threshold that no malignant "
    "validation frame passed",
    NO_MAJORITY: "no majority among the models",
    MODEL_REFUSED: "a model refused the image",
}


class _Answer(Protocol):
    status: str
    label: str
    abstained: bool
    malignant_probability: float | None
    probabilities: Mapping[str, float]
    model_name: str
    model_version: str


@dataclass(frozen=True)
class Consensus:
    label: str | None  # None: no consensus -> refer for manual review
    votes: dict[str, int]
    answered: int  # models that finished (done), abstentions included
    abstained: int
    mean_malignant_probability: float | None
    method: str = MAJORITY  # ENSEMBLE or MAJORITY
    #: why the consensus refers (None when it answers): low_confidence, benign_not_confirmed, no_majority,
    #: model_refused
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


def consensus(analyses: Iterable[_Answer], ensemble: Ensemble | None = _DEFAULT) -> Consensus | None:
    """The consensus of the finished analyses; None when nothing has finished.

    With the ensemble (``ensemble``: default the shipped one; None forces the majority vote): its label,
    or a referral with its reason. Majority vote: a label wins only with a strict majority of all finished
    analyses (so 2 of 4 is no consensus, and any abstention makes agreement harder, never easier).
    """
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
    ens = load_ensemble() if ensemble is _DEFAULT else ensemble
    members = {a.model_name: (a.model_version, a.probabilities) for a in done if a.probabilities and a.model_name}
    if ens is not None and (answer := ens.combine(members)) is not None:
        return Consensus(
            label=answer.label,
            method=ENSEMBLE,
            reason=answer.abstain_reason,
            probabilities=answer.probabilities,
            malignant_probability=answer.malignant_probability,
            members_used=answer.members_used,
            members_missing=answer.members_missing,
            ensemble_version=ens.version,
            **common,
        )
    label: str | None = None
    if votes:
        top, count = votes.most_common(1)[0]
        if count * 2 > len(done):
            label = top
    return Consensus(label=label, reason=None if label else NO_MAJORITY, **common)
