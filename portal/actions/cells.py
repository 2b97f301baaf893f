"""Cells under review: a technologist reclassifies a detection, or adds a white cell the model missed.

Both are audited (old -> new, or the added box and type), refused (and audited as refused) without
analyses.reclassify_cell or once a reviewer signed off the frame.

- :func:`reclassify_cell`: sets a cell's type (the differential counts it there); the type may be
  "artefact" (not a cell: left out of every count, reported as excluded).
- :func:`add_cell`: a technologist outlines a white cell the cell model did not find (a box on the frame)
  and types it; it counts in the differential like any cell, marked as added by hand. Refused before the
  frame's cell analysis has finished, for a box outside the image, too small, or lying over a cell
  already counted (that one is reclassified instead).
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
from portal.actions.events import User, log_refusal
from portal.analyses.differential import REVIEW_LABELS
from portal.analyses.models import Cell, CellAnalysis, Image, ImmutableError, image_is_signed
from portal.audit.log import record

__all__ = ["MAX_OVERLAP", "MIN_CELL_SIDE", "add_cell", "reclassify_cell"]

#: The smallest box side, in image pixels, of a cell added by hand (a platelet is 2-3 µm: a few pixels).
MIN_CELL_SIDE = 4
#: A box added by hand may overlap a cell already counted by at most this intersection over union: more
#: is the same cell counted twice.
MAX_OVERLAP = 0.5


def reclassify_cell(actor: User, cell: Cell, label: str, request: HttpRequest | None = None) -> Cell:
    """A technologist sets a cell's type (the differential counts it there), audited old -> new; the
    type may be "artefact" (not a cell: left out of every count, reported as excluded).

    Refused (and audited as refused) without analyses.reclassify_cell, for a label outside
    portal.analyses.differential.REVIEW_LABELS, or once a reviewer signed off the cell's frame.
    """
    try:
        return _reclassify_cell(actor, cell, label, request)
    except (PermissionDenied, ValidationError, ImmutableError) as exc:
        log_refusal("cell.reclassify_refused", actor, cell, request, exc, image_id=cell.image_id, new=label[:40])
        raise


def _reclassify_cell(actor: User, cell: Cell, label: str, request: HttpRequest | None) -> Cell:
    if isinstance(actor, AnonymousUser) or not actor.has_perm("analyses.reclassify_cell"):
        raise PermissionDenied("only technologists and reviewers can reclassify cells")
    if label not in REVIEW_LABELS:
        raise ValidationError(f"unknown cell type {label!r}")
    with transaction.atomic():
        cell = Cell.objects.select_for_update().get(pk=cell.pk)
        if image_is_signed(cell.image_id):
            raise ImmutableError("this frame is signed off: its cells cannot be reclassified")
        old = cell.final_label
        cell.reviewed_label = label
        cell.reviewed_by = actor
        cell.reviewed_at = timezone.now()
        cell.save(update_fields=["reviewed_label", "reviewed_by", "reviewed_at"])
        record(
            "cell.reclassify",
            actor=actor,
            obj=cell,
            request=request,
            data={"image_id": cell.image_id, "model_label": cell.label, "old": old, "new": label},
        )
    return cell


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
