"""A specimen's conclusion from the database: each frame's evidence, the pooled differential, the target.

The rules live in portal.analyses.conclusion (pure Python); this module only reads what they need, once
per page or export: every frame's analyses (their consensus, portal.analyses.consensus), its sign-off,
its cell analysis and its cells. The summary page, the API, the PDF, FHIR and the CSV all call
:func:`specimen_conclusion`, so they cannot disagree.
"""

from __future__ import annotations

from portal.analyses.cell_review import frame_reviews, specimen_cells, target_count
from portal.analyses.conclusion import FrameEvidence, SpecimenConclusion, conclude
from portal.analyses.consensus import consensus
from portal.analyses.differential import BLAST, WHITE_CATEGORIES, count_progress, differential
from portal.analyses.models import Analysis, Cell, CellAnalysis, SpecimenReview
from portal.patients.models import Specimen

__all__ = ["frame_evidence", "signed_review", "specimen_conclusion", "target_count"]


def signed_review(specimen: Specimen) -> SpecimenReview | None:
    return SpecimenReview.objects.filter(specimen=specimen).first()


def frame_evidence(specimen: Specimen, cells: list[Cell]) -> list[FrameEvidence]:
    """Each frame of the specimen in upload order, as the conclusion's rules read it."""
    images = list(specimen.images.order_by("uploaded_at", "id").prefetch_related("analyses"))
    reviews = frame_reviews(images)
    cell_jobs = {c.image_id: c for c in CellAnalysis.objects.filter(image__in=images)}
    out = []
    for image in images:
        analyses: list[Analysis] = list(image.analyses.all())
        agreed = consensus(analyses)
        review = reviews.get(image.pk)
        job = cell_jobs.get(image.pk)
        own = [c for c in cells if c.image_id == image.pk]
        out.append(
            FrameEvidence(
                image_id=image.pk,
                name=image.original_name,
                consensus_label=agreed.label if agreed else None,
                refer_reason=agreed.refer_text if agreed else "",
                signed_label=review.final_label if review is not None else None,
                pending=any(not a.is_final for a in analyses),
                has_result=any(a.status == Analysis.Status.DONE for a in analyses),
                cells_done=job is not None and job.status == CellAnalysis.Status.DONE,
                white_cells=sum(1 for c in own if c.final_label in WHITE_CATEGORIES),
                blasts=sum(1 for c in own if c.final_label == BLAST),
            )
        )
    return out


def specimen_conclusion(specimen: Specimen) -> SpecimenConclusion:
    """The specimen's conclusion now (a signed-off specimen keeps the one it was signed with as evidence)."""
    cells = list(specimen_cells(specimen))
    diff = differential(cells)
    return conclude(frame_evidence(specimen, cells), diff, count_progress(diff.white_cells, target_count()))
