"""Reading a specimen's cells: its differential, the gallery grouped by type, frame sign-offs, cell crops.

Shared by the pages (cell_views), the exports (reports) and the API, so they all count the same way.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.db.models import QuerySet
from PIL import Image as PILImage

from core.aspect import x_scale_of
from core.cell_answer import CELL_COLOURS, UNCLASSIFIED
from core.registry import CELL_REGISTRY
from portal.analyses import storage
from portal.analyses.differential import (
    ARTEFACT,
    BLAST_THRESHOLD_PERCENT,
    CATEGORIES,
    Differential,
    count_progress,
    describe,
    differential,
)
from portal.analyses.models import REVIEWED_LABEL_CHOICES, Cell, CellAnalysis, Image, ImageReview, Review
from portal.patients.models import Specimen

__all__ = [
    "CROP_SIDE",
    "GalleryGroup",
    "crop_png",
    "differential_context",
    "frame_reviews",
    "gallery",
    "specimen_cells",
    "specimen_differential",
    "target_count",
]

#: Gallery crops are scaled so their longer side is this many pixels (never enlarged past 2x).
CROP_SIDE = 128
_DEFAULT_MARGIN = 0.25


def specimen_cells(specimen: Specimen) -> QuerySet[Cell]:
    """Every cell found in the specimen's frames, frame by frame in upload order."""
    return (
        Cell.objects.filter(image__specimen=specimen)
        .select_related("image", "reviewed_by", "cell_analysis")
        .order_by("image__uploaded_at", "image_id", "index")
    )


def target_count() -> int:
    """The white cells this lab counts per specimen (settings.PORTAL_DIFFERENTIAL_TARGET: 100 or 200)."""
    return int(settings.PORTAL_DIFFERENTIAL_TARGET)


def specimen_differential(specimen: Specimen) -> Differential:
    return differential(specimen_cells(specimen))


def frame_reviews(images: list[Image]) -> dict[int, ImageReview | Review]:
    """Each signed frame's sign-off (image id -> its ImageReview, else the first per-model Review of earlier
    versions): it locks the frame's cells."""
    out: dict[int, ImageReview | Review] = {r.image_id: r for r in ImageReview.objects.filter(image__in=images)}
    for review in Review.objects.filter(analysis__image__in=images).select_related("analysis").order_by("signed_at"):
        out.setdefault(review.analysis.image_id, review)
    return out


@dataclass(frozen=True)
class GalleryGroup:
    category: str
    description: str
    cells: list[Cell]
    excluded: bool = False  # artefacts: shown for review, left out of the differential

    @property
    def colour(self) -> str:
        """The type's drawing colour (core.cell_answer.CELL_COLOURS), as on the frames' overlays."""
        return CELL_COLOURS.get(self.category, CELL_COLOURS[UNCLASSIFIED])


def gallery(cells: list[Cell]) -> list[GalleryGroup]:
    """Cells grouped by final type, in the differential's order (artefacts last); empty types left out."""
    groups: dict[str, list[Cell]] = {c: [] for c in CATEGORIES}
    for cell in cells:
        groups[cell.final_label].append(cell)
    return [GalleryGroup(c, describe(c), groups[c], c == ARTEFACT) for c in CATEGORIES if groups[c]]


def _margin(model_name: str) -> float:
    """The crop context the cell model itself uses (core.registry.CellModelSpec.crop_margin)."""
    spec = CELL_REGISTRY.get(model_name)
    return spec.crop_margin if spec is not None else _DEFAULT_MARGIN


def crop_png(cell: Cell) -> bytes:
    """The cell cut from the stored original image by its box (grown by the model's margin), as PNG, at its
    true shape (a squashed 4:3 frame's crop widened back, core.aspect)."""
    x0, y0, x1, y1 = (int(v) for v in cell.box)
    return _crop(cell.image.storage_name, (x0, y0, x1, y1), _margin(cell.cell_analysis.model_name))


@lru_cache(maxsize=512)
def _crop(storage_name: str, box: tuple[int, int, int, int], margin: float) -> bytes:
    """Cached: a stored image never changes (random name, written once), so neither do its crops."""
    x0, y0, x1, y1 = box
    grow_x, grow_y = round((x1 - x0) * margin), round((y1 - y0) * margin)
    with PILImage.open(io.BytesIO(storage.read(storage_name))) as im:
        region = (max(0, x0 - grow_x), max(0, y0 - grow_y), min(im.width, x1 + grow_x), min(im.height, y1 + grow_y))
        crop = im.convert("RGB").crop(region)
        x_scale = x_scale_of(im.size)
    scale = min(2.0, CROP_SIDE / max(crop.width * x_scale, crop.height, 1))
    crop = crop.resize(
        (max(1, round(crop.width * x_scale * scale)), max(1, round(crop.height * scale))), PILImage.Resampling.LANCZOS
    )
    out = io.BytesIO()
    crop.save(out, "PNG", optimize=True)
    return out.getvalue()


def differential_context(specimen: Specimen) -> dict[str, object]:
    """What the differential page and the printable report show."""
    cells = list(specimen_cells(specimen))
    images = list(specimen.images.order_by("uploaded_at", "id"))
    reviews = frame_reviews(images)
    jobs = {c.image_id: c for c in CellAnalysis.objects.filter(image__in=images)}
    frames = [
        {
            "image": image,
            "cell_analysis": jobs.get(image.pk),
            "cells": sum(1 for c in cells if c.image_id == image.pk),
            "review": reviews.get(image.pk),
        }
        for image in images
    ]
    for cell in cells:
        cell.locked = cell.image_id in reviews  # type: ignore[attr-defined]
    diff = differential(cells)
    return {
        "specimen": specimen,
        "diff": diff,
        "progress": count_progress(diff.white_cells, target_count()),
        "threshold": BLAST_THRESHOLD_PERCENT,
        "groups": gallery(cells),
        "frames": frames,
        "signed_frames": sum(1 for f in frames if f["review"]),
        "cell_types": REVIEWED_LABEL_CHOICES,
    }
