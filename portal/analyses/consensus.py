"""Consensus of several models' answers for one image."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Consensus", "consensus"]


class _Answer(Protocol):
    status: str
    label: str
    abstained: bool
    malignant_probability: float | None


@dataclass(frozen=True)
class Consensus:
    label: str | None  # None: no consensus -> refer for manual review
    votes: dict[str, int]
    answered: int  # models that finished (done), abstentions included
    abstained: int
    mean_malignant_probability: float | None

    @property
    def refer(self) -> bool:
        return self.label is None

    @property
    def agreement(self) -> str:
        if self.label is None:
            return "no consensus"
        return f"{self.votes[self.label]} of {self.answered}"


def consensus(analyses: Iterable[_Answer]) -> Consensus | None:
    """Majority vote of the finished analyses; abstentions vote for nobody.

    A label wins only with a strict majority of all finished analyses (so 2 of 4 is no consensus,
    and any abstention makes agreement harder, never easier). None when nothing has finished.
    """
    done = [a for a in analyses if a.status == "done"]
    if not done:
        return None
    votes = Counter(a.label for a in done if not a.abstained and a.label)
    abstained = sum(1 for a in done if a.abstained)
    label: str | None = None
    if votes:
        top, count = votes.most_common(1)[0]
        if count * 2 > len(done):
            label = top
    probs = [a.malignant_probability for a in done if a.malignant_probability is not None]
    return Consensus(
        label=label,
        votes=dict(votes),
        answered=len(done),
        abstained=abstained,
        mean_malignant_probability=sum(probs) / len(probs) if probs else None,
    )
