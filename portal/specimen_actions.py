"""Domain actions at the specimen level: adding a cell the model missed, and the specimen's sign-off.

The same rules as portal.actions (kept apart so neither module grows past a readable size): every write
runs inside ``transaction.atomic`` with its audit row (portal.audit.registry) in the same transaction, and
a refusal raises and leaves an audit row of its own.

- :func:`add_cell`: a technologist outlines a white cell the cell model did not find (a box on the frame)
  and types it; it counts in the differential like any cell, marked as added by hand. Refused once the
  frame is signed off, before its cell analysis has finished, for a box outside the image, too small, or
  lying over a cell already counted (that one is reclassified instead).
- :func:`sign_off_specimen`: the reviewer's one decision on the specimen once every frame with a result is
  signed off: agree with the conclusion (portal.analyses.conclusion) or set the specimen's class, always
  with an interpretive comment. The conclusion is kept as evidence; the sign-off never changes, and the
  specimen takes no more images (portal.actions.upload_images).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Max
from django.http import HttpRequest
from django.utils import timezone

from core.registry import CELL_CLASSES
from portal.actions import log_event, log_refusal
from portal.analyses.conclusion import SpecimenConclusion
from portal.analyses.models import (
    CLASS_LABELS,
    Cell,
    CellAnalysis,
    Image,
    ImmutableError,
    SpecimenReview,
    image_is_signed,
)
from portal.analyses.specimen_summary import specimen_conclusion
from portal.audit.log import record
from portal.patients.models import Specimen

__all__ = ["MAX_OVERLAP", "MIN_CELL_SIDE", "add_cell", "log_summary_read", "sign_off_specimen"]

User = Any

#: The smallest box side, in image pixels, of a cell added by hand (a platelet is 2-3 µm: a few pixels).
MIN_CELL_SIDE = 4
#: A box added by hand may overlap a cell already counted by at most this intersection over union: more
#: is the same cell counted twice.
MAX_OVERLAP = 0.5


def log_summary_read(actor: User, specimen: Specimen, conclusion: SpecimenConclusion, request: HttpRequest) -> None:
    """Audit a read of the specimen's summary (the page or the API) with the conclusion it showed."""
    log_event(
        "specimen.summary",
        actor=actor,
        obj=specimen,
        request=request,
        data={"label": conclusion.label, "checks": [c.code for c in conclusion.checks]},
    )


# --- a cell the model missed ----------------------------------------------------------------------


def _overlap(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _box(box: Any, image: Image) -> list[int]:
    try:
        values = [round(float(v)) for v in box]
    except (TypeError, ValueError):
        raise ValidationError("the box must be four numbers: x0, y0, x1, y1") from None
    if len(values) != 4:
        raise ValidationError("the box must be four numbers: x0, y0, x1, y1")
    x0, y0, x1, y1 = values
    if not (0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height):
        raise ValidationError(f"the box {values} is not inside the {image.width}x{image.height} image")
    if x1 - x0 < MIN_CELL_SIDE or y1 - y0 < MIN_CELL_SIDE:
        raise ValidationError(f"the box is smaller than {MIN_CELL_SIDE} pixels on a side")
    return values


def add_cell(actor: User, image: Image, box: Any, label: str, request: HttpRequest | None = None) -> Cell:
    """A technologist adds a cell the model missed: its box on the frame (image pixels) and its type."""
    try:
        return _add_cell(actor, image, box, label, request)
    except (PermissionDenied, ValidationError, ImmutableError) as exc:
        log_refusal("cell.add_refused", actor, image, request, exc, box=str(box)[:100], label=str(label)[:40])
        raise


def _add_cell(actor: User, image: Image, box: Any, label: str, request: HttpRequest | None) -> Cell:
    if isinstance(actor, AnonymousUser) or not actor.has_perm("analyses.reclassify_cell"):
        raise PermissionDenied("only technologists and reviewers can add cells")
    if label not in CELL_CLASSES:
        raise ValidationError(f"unknown cell type {label!r}")
    with transaction.atomic():
        image = Image.objects.select_for_update().get(pk=image.pk)
        if image_is_signed(image.pk):
            raise ImmutableError("this frame is signed off: no cell can be added")
        job = CellAnalysis.objects.filter(image=image).first()
        if job is None or job.status != CellAnalysis.Status.DONE:
            raise ValidationError("the cell analysis of this frame has not finished: add missed cells once it has")
        values = _box(box, image)
        for other in Cell.objects.filter(image=image).exclude(reviewed_label="artefact"):
            if _overlap(values, other.box) > MAX_OVERLAP:
                raise ValidationError(
                    f"the box lies over cell #{other.index + 1} ({other.final_label}), already counted: "
                    "reclassify it instead"
                )
        index = (Cell.objects.filter(cell_analysis=job).aggregate(n=Max("index"))["n"] or 0) + 1
        x0, y0, x1, y1 = values
        cell = Cell.objects.create(
            cell_analysis=job,
            image=image,
            index=index,
            box=values,
            score=None,
            label="",
            abstained=False,
            manual=True,
            cell_polygon=[[x0, y0], [x1, y0], [x1, y1], [x0, y1]],
            cell_area_px=(x1 - x0) * (y1 - y0),
            reviewed_label=label,
            reviewed_by=actor,
            reviewed_at=timezone.now(),
        )
        record(
            "cell.add",
            actor=actor,
            obj=cell,
            request=request,
            data={"image_id": image.pk, "box": values, "label": label},
        )
    return cell


# --- the specimen's sign-off -----------------------------------------------------------------------


def sign_off_specimen(
    actor: User,
    specimen: Specimen,
    *,
    decision: str,
    final_label: str | None = None,
    comment: str = "",
    request: HttpRequest | None = None,
) -> SpecimenReview:
    """The reviewer's one sign-off of the specimen, with an interpretive comment; then it never changes."""
    try:
        return _sign_off_specimen(actor, specimen, decision, final_label, comment, request)
    except (PermissionDenied, ValidationError, ImmutableError) as exc:
        log_refusal(
            "specimen.sign_off_refused",
            actor,
            specimen,
            request,
            exc,
            decision=str(decision)[:20],
            final_label=str(final_label or "")[:20],
        )
        raise


def _sign_off_specimen(
    actor: User, specimen: Specimen, decision: str, final_label: str | None, comment: str, request: HttpRequest | None
) -> SpecimenReview:
    if isinstance(actor, AnonymousUser) or not actor.has_perm("analyses.sign_off_analysis"):
        raise PermissionDenied("only reviewers can sign off a specimen")
    if decision not in SpecimenReview.Decision.values:
        raise ValidationError(f"unknown decision {decision!r}")
    comment = comment.strip()
    if not comment:
        raise ValidationError("a specimen sign-off needs an interpretive comment")
    with transaction.atomic():
        specimen = Specimen.objects.select_for_update().get(pk=specimen.pk)
        if SpecimenReview.objects.filter(specimen=specimen).exists():
            raise ImmutableError("this specimen is already signed off")
        conclusion = specimen_conclusion(specimen)
        frames = [f for f in conclusion.frames if f.evidence.has_result or f.evidence.pending]
        if not frames:
            raise ValidationError("no frame of this specimen has a result")
        if conclusion.pending:
            raise ValidationError("some frames are still being analysed: sign off once every result is in")
        unsigned = [f.evidence.name for f in frames if f.source != "signed"]
        if unsigned:
            raise ValidationError(f"sign off every frame first; not signed yet: {', '.join(unsigned)}")
        if decision == SpecimenReview.Decision.AGREE:
            if conclusion.label is None:
                raise ValidationError("the conclusion refers the specimen: set its class yourself, with your comment")
            final = conclusion.label
        else:
            if final_label not in CLASS_LABELS:
                raise ValidationError("choose the specimen's class")
            final = str(final_label)
        blast = conclusion.differential.blast_percent
        review = SpecimenReview.objects.create(
            specimen=specimen,
            reviewer=actor,
            reviewer_name=actor.get_username(),
            decision=decision,
            final_label=final,
            conclusion_label=conclusion.label or "",
            blast_percent=None if blast is None else round(blast, 1),
            comment=comment,
            evidence=conclusion.as_dict(),
        )
        record(
            "specimen.sign_off",
            actor=actor,
            obj=specimen,
            request=request,
            data={
                "decision": decision,
                "conclusion_label": conclusion.label or "",
                "final_label": final,
                "comment": comment,
                "blast_percent": review.blast_percent,
                "white_cells": conclusion.differential.white_cells,
                "checks": [c.code for c in conclusion.checks],
                "frames": {str(f.evidence.image_id): f.label for f in conclusion.frames},
            },
        )
    return review
