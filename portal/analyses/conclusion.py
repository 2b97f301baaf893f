"""One conclusion per specimen from its frames and its cells: pure Python, no database, one rule per check.

A specimen is several frames (images) of one smear. Each frame has a result of its own: the reviewer's
signed label once signed off, else the consensus of the frame models (portal.analyses.consensus: a label,
or a referral with its reason). The cell model's cells of every frame are pooled into one differential
(portal.analyses.differential), whose blast percentage is the cell-level evidence.

:func:`conclude` reads both and says one thing about the specimen:

- the frames, each with the label it counts with (signed where signed, else the consensus) and why it is
  referred when it is;
- the pooled differential, its blast percentage with the 95% interval against the acute-leukaemia line,
  and how far the count is towards the lab's target;
- **agreement checks** between a frame's label and its own cells, each a rule of its own:

  * :data:`ALL_WITHOUT_BLASTS`: a frame called ALL (Early Pre-B, Pre-B or Pro-B) in which the cell model
    found no blast (or which has no cell analysis to show one);
  * :data:`BLASTS_IN_BENIGN`: blasts found in the frames called Benign, pooled: at least
    :data:`BENIGN_BLASTS_MIN` of them and at least the acute-leukaemia line's share
    (:data:`BLAST_THRESHOLD_PERCENT`) of those frames' white cells. Fewer is a note per frame, not a
    referral: the typer calls some benign lymphoid cells (hematogones, the blast's benign mimic) blast, and
    a frame holds about ten white cells, so a rule on any one blast, or on each frame alone, sent most Benign
    specimens to a reviewer (``python -m evaluation.specimen_checks`` measures what each rule costs and
    catches);

- the specimen's label: the one label all its labelled frames share. There is none (refer, with every
  reason) while no frame has a result, while a frame is still being analysed, while a frame is referred
  and not signed off, when an agreement check fails, or when the frames disagree (Benign beside ALL, or
  two ALL subtypes).

Notes that do not refer (the count is under its target, the blasts' interval still crosses the line) are
listed apart. The conclusion is decision support for the reviewer who signs the specimen off, not a
diagnosis.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.registry import BENIGN_INDEX, CLASS_DESCRIPTIONS, CLASS_NAMES
from portal.analyses.differential import (
    BLAST_THRESHOLD_PERCENT,
    CountProgress,
    Differential,
)

__all__ = [
    "ALL_LABELS",
    "ALL_WITHOUT_BLASTS",
    "BENIGN",
    "BENIGN_BLASTS_MIN",
    "BLASTS_IN_BENIGN",
    "CHECKS",
    "Check",
    "FrameEvidence",
    "FrameResult",
    "SpecimenConclusion",
    "check_frame",
    "class_description",
    "benign_blasts",
    "benign_blasts_refer",
    "benign_notes",
    "check_benign_frames",
    "conclude",
]

BENIGN = CLASS_NAMES[BENIGN_INDEX]
#: The malignant frame classes (acute lymphoblastic leukaemia subtypes), from the registry.
ALL_LABELS: tuple[str, ...] = tuple(c for c in CLASS_NAMES if c != BENIGN)

ALL_WITHOUT_BLASTS = "all_without_blasts"
BLASTS_IN_BENIGN = "blasts_in_benign"
#: The frames called Benign refer when at least this many of their white cells, pooled, are blasts and they are at
#: least BLAST_THRESHOLD_PERCENT of them (the module docstring says why).
BENIGN_BLASTS_MIN = 2
#: Every agreement check, code -> what it means (pages and the API list them).
CHECKS: dict[str, str] = {
    ALL_WITHOUT_BLASTS: "A frame called ALL in which no blast was found",
    BLASTS_IN_BENIGN: (
        f"At least {BENIGN_BLASTS_MIN} blasts, {BLAST_THRESHOLD_PERCENT:g}% or more of the white cells, in the "
        "frames called Benign (pooled)"
    ),
}


def class_description(label: str | None) -> str:
    """A frame or specimen class in words ("Pre" -> "Pre-B ALL"), from the registry; anything else (an empty
    label, an unknown code) as it is, None as empty. Every page, form, export and the FHIR bundle name
    classes through it."""
    return CLASS_DESCRIPTIONS.get(label or "", label or "")


@dataclass(frozen=True)
class FrameEvidence:
    """What is known about one frame: its models' consensus, its sign-off, its cells."""

    image_id: int
    name: str
    #: the frame models' consensus label; None when it refers (or no model answered)
    consensus_label: str | None
    #: why the consensus refers, in words ("" when it answers)
    refer_reason: str = ""
    #: the reviewer's final label once the frame is signed off, else None
    signed_label: str | None = None
    #: some frame model is still running
    pending: bool = False
    #: at least one frame model answered (a frame every model refused or failed on has no result)
    has_result: bool = True
    #: the cell analysis finished (its cells are in the counts below)
    cells_done: bool = False
    white_cells: int = 0
    blasts: int = 0


@dataclass(frozen=True)
class Check:
    """A failed agreement check: which rule, which frame, and why in words."""

    code: str
    image_id: int | None
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "image_id": self.image_id, "text": self.text}


@dataclass(frozen=True)
class FrameResult:
    """A frame as the conclusion counts it."""

    evidence: FrameEvidence
    #: the label it counts with: signed where signed, else the consensus; None: referred (or no result)
    label: str | None
    #: "signed", "consensus", or "" (no label)
    source: str
    #: why it has no label ("" when it has one)
    why: str = ""

    @property
    def referred(self) -> bool:
        return self.evidence.has_result and not self.evidence.pending and self.label is None

    def as_dict(self) -> dict[str, Any]:
        e = self.evidence
        return {
            "image_id": e.image_id,
            "name": e.name,
            "label": self.label,
            "source": self.source,
            "consensus_label": e.consensus_label,
            "signed_label": e.signed_label,
            "referred": self.referred,
            "why": self.why,
            "pending": e.pending,
            "has_result": e.has_result,
            "cells_done": e.cells_done,
            "white_cells": e.white_cells,
            "blasts": e.blasts,
        }


@dataclass(frozen=True)
class SpecimenConclusion:
    frames: tuple[FrameResult, ...]
    differential: Differential
    progress: CountProgress
    checks: tuple[Check, ...]
    #: the specimen's label (a frame class); None: refer, see ``reasons``
    label: str | None
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def refer(self) -> bool:
        return self.label is None

    @property
    def referred_frames(self) -> tuple[FrameResult, ...]:
        return tuple(f for f in self.frames if f.referred)

    @property
    def pending(self) -> bool:
        return any(f.evidence.pending for f in self.frames)

    @property
    def label_text(self) -> str:
        return class_description(self.label) if self.label else "Refer: no specimen conclusion"

    @property
    def frames_text(self) -> str:
        """How the labelled frames add up, e.g. "3 of 3 frames: Pre-B ALL 3 (2 signed off, 1 by consensus)"."""
        results = [f for f in self.frames if f.evidence.has_result]
        labelled = [f for f in results if f.label]
        if not results:
            return "no frame has a result"
        by_label = Counter(f.label for f in labelled)
        parts = ", ".join(f"{class_description(str(label))} {n}" for label, n in sorted(by_label.items()))
        signed = sum(1 for f in labelled if f.source == "signed")
        how = f"{signed} signed off, {len(labelled) - signed} by consensus"
        referred = len(self.referred_frames)
        tail = f"; {referred} referred" if referred else ""
        return f"{len(labelled)} of {len(results)} frames labelled: {parts or 'none'} ({how}){tail}"

    @property
    def text(self) -> str:
        """The conclusion in one paragraph: label, frames, blasts, and every reason to refer."""
        head = f"{self.label_text}. {self.frames_text[0].upper()}{self.frames_text[1:]}."
        body = f" {self.differential.blast_text}."
        why = f" Why refer: {' '.join(r if r.endswith('.') else r + '.' for r in self.reasons)}" if self.reasons else ""
        return head + body + why

    def as_dict(self) -> dict[str, Any]:
        """For the API, the sign-off's evidence and the audit trail."""
        return {
            "label": self.label,
            "refer": self.refer,
            "text": self.text,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "checks": [c.as_dict() for c in self.checks],
            "frames": [f.as_dict() for f in self.frames],
            "referred_frames": [f.evidence.image_id for f in self.referred_frames],
            "differential": self.differential.as_dict(),
            "target_count": self.progress.target,
            "target_reached": self.progress.reached,
        }


def _frame_result(e: FrameEvidence) -> FrameResult:
    if e.signed_label:
        return FrameResult(e, e.signed_label, "signed")
    if not e.has_result:
        return FrameResult(e, None, "", "no frame model has a result for this frame")
    if e.pending:
        return FrameResult(e, None, "", "frame models are still running")
    if e.consensus_label:
        return FrameResult(e, e.consensus_label, "consensus")
    return FrameResult(e, None, "", f"no consensus: {e.refer_reason or 'the models disagree'}")


def check_frame(frame: FrameResult) -> list[Check]:
    """The :data:`ALL_WITHOUT_BLASTS` check of one labelled frame against its own cells (empty: they agree)."""
    e, label = frame.evidence, frame.label
    if label is None:
        return []
    called = f"Frame {e.name!r} is called {class_description(label)}"
    if label in ALL_LABELS and e.blasts == 0:
        if not e.cells_done:
            return [Check(ALL_WITHOUT_BLASTS, e.image_id, f"{called} but has no cell analysis to show a blast")]
        return [
            Check(
                ALL_WITHOUT_BLASTS,
                e.image_id,
                f"{called} but the cell analysis found no blast among its {e.white_cells} white cells",
            )
        ]
    return []


def _called_benign(frames: Sequence[FrameResult]) -> list[FrameEvidence]:
    """The frames called Benign (signed or by consensus) whose cell analysis finished."""
    return [f.evidence for f in frames if f.label == BENIGN and f.evidence.cells_done]


def benign_blasts(frames: Sequence[FrameResult]) -> tuple[int, int]:
    """Blasts and white cells pooled over the frames called Benign whose cell analysis finished."""
    called = _called_benign(frames)
    return sum(e.blasts for e in called), sum(e.white_cells for e in called)


def benign_blasts_refer(blasts: int, white_cells: int) -> bool:
    """The :data:`BLASTS_IN_BENIGN` line: at least :data:`BENIGN_BLASTS_MIN` blasts making at least
    :data:`BLAST_THRESHOLD_PERCENT` of the white cells of the frames called Benign, pooled."""
    return blasts >= BENIGN_BLASTS_MIN and 100 * blasts >= BLAST_THRESHOLD_PERCENT * white_cells


def _with_blasts(frames: Sequence[FrameResult]) -> list[FrameEvidence]:
    return [e for e in _called_benign(frames) if e.blasts > 0]


def _blasts_found(blasts: int, white_cells: int, whose: str) -> str:
    return f"{blasts} blast{'s were' if blasts != 1 else ' was'} found among {whose} {white_cells} white cells"


def check_benign_frames(frames: Sequence[FrameResult]) -> list[Check]:
    """The :data:`BLASTS_IN_BENIGN` check over the specimen's frames called Benign (empty: they agree)."""
    blasts, white = benign_blasts(frames)
    if not benign_blasts_refer(blasts, white):
        return []
    holding = _with_blasts(frames)
    called = _called_benign(frames)
    image_id = holding[0].image_id if len(holding) == 1 else None
    if len(called) == 1:
        e = called[0]
        text = f"Frame {e.name!r} is called {class_description(BENIGN)} but {_blasts_found(blasts, white, 'its')}"
    else:
        names = ", ".join(repr(e.name) for e in holding)
        text = (
            f"{len(called)} frames are called {class_description(BENIGN)} but {_blasts_found(blasts, white, 'their')} "
            f"({100 * blasts / white:.1f}%; in {names})"
        )
    return [Check(BLASTS_IN_BENIGN, image_id, text)]


def benign_notes(frames: Sequence[FrameResult]) -> list[str]:
    """What the reviewer should look at without a referral: blasts in frames called Benign under the line."""
    blasts, white = benign_blasts(frames)
    if blasts == 0 or benign_blasts_refer(blasts, white):
        return []
    line = (
        f"under the line that refers (at least {BENIGN_BLASTS_MIN} blasts and {BLAST_THRESHOLD_PERCENT:g}% of the "
        "white cells of the frames called Benign, pooled)"
    )
    return [
        f"Frame {e.name!r} is called {class_description(BENIGN)} and {_blasts_found(e.blasts, e.white_cells, 'its')}, "
        f"{line}: check {'them' if e.blasts != 1 else 'it'} in the gallery"
        for e in _with_blasts(frames)
    ]


def conclude(
    frames: Sequence[FrameEvidence], differential: Differential, progress: CountProgress
) -> SpecimenConclusion:
    """The specimen's conclusion from its frames' evidence and its pooled differential."""
    results = tuple(_frame_result(e) for e in frames)
    checks = tuple([c for f in results for c in check_frame(f)] + check_benign_frames(results))
    reasons: list[str] = []
    with_result = [f for f in results if f.evidence.has_result]
    pending = [f for f in results if f.evidence.pending and not f.label]
    if not with_result:
        reasons.append("No frame has a result yet")
    if pending:
        reasons.append(f"{len(pending)} frame{'s are' if len(pending) != 1 else ' is'} still being analysed")
    for f in results:
        if f.referred:
            reasons.append(f"Frame {f.evidence.name!r} is referred ({f.why}) and not signed off yet")
    reasons += [c.text for c in checks]
    labels = Counter(f.label for f in results if f.label)
    if len(labels) > 1:
        parts = ", ".join(f"{class_description(str(label))} in {n}" for label, n in sorted(labels.items()))
        if BENIGN in labels:
            reasons.append(f"The frames disagree: {parts}")
        else:
            reasons.append(f"The frames agree on ALL but not on its subtype: {parts}")
    label = next(iter(labels)) if len(labels) == 1 and not reasons else None
    notes = benign_notes(results)
    if not progress.reached:
        notes.append(f"{progress.text}: the percentages are provisional")
    if differential.blast_interval_crosses_threshold:
        notes.append(
            f"The blasts' 95% interval crosses the {BLAST_THRESHOLD_PERCENT:g}% line: this count cannot tell which "
            "side of it the specimen is on"
        )
    return SpecimenConclusion(results, differential, progress, checks, label, tuple(reasons), tuple(notes))
