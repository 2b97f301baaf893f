"""Exports: CSV files, one table with one header each. The per-specimen PDF report is
portal.analyses.pdf_report, which imports this module.

- the analyses of a period: one row per (image, model), with the image's consensus beside each model's
  answer and the reviewer's final label;
- a specimen's differential: one row per category (count, percent of the white cells with its 95%
  interval, per 100 white cells for nucleated red cells);
- a specimen's cells: one row per cell (the model's answer, the technologist's type, added by hand or not);
- a specimen's summary: one row, its conclusion (portal.analyses.conclusion) and sign-off.

Each file is one table with one header, so spreadsheets and LIS imports read it whole; every file ends
with the same ``notice`` column, the decision-support disclaimer.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from core.registry import CELL_CLASSES
from portal.analyses.cell_review import specimen_cells
from portal.analyses.consensus import Consensus, consensus
from portal.analyses.differential import BLAST_THRESHOLD_PERCENT, differential
from portal.analyses.models import CLASS_LABELS, Analysis, Image
from portal.analyses.specimen_summary import signed_review, specimen_conclusion
from portal.patients.models import Specimen

__all__ = [
    "CELLS_CSV_COLUMNS",
    "CSV_COLUMNS",
    "DIFFERENTIAL_CSV_COLUMNS",
    "DISCLAIMER",
    "SUMMARY_CSV_COLUMNS",
    "analyses_in_range",
    "cells_csv_bytes",
    "csv_bytes",
    "differential_csv_bytes",
    "summary_csv_bytes",
]

DISCLAIMER = (
    "Decision support only, not a diagnosis. Model outputs are pre-classifications for trained laboratory "
    "staff; a qualified reviewer must confirm or reclassify every result. Not validated for clinical use."
)

#: The differential CSV: one row per category (the cells are in their own file, CELLS_CSV_COLUMNS).
DIFFERENTIAL_CSV_COLUMNS = [
    "specimen_accession",
    "patient_mrn",
    "cell_type",
    "group",
    "count",
    "percent_of_white_cells",
    "ci95_low",
    "ci95_high",
    "per_100_white_cells",
    "notice",
]
#: The cells CSV: one row per cell of the specimen.
CELLS_CSV_COLUMNS = [
    "specimen_accession",
    "cell_id",
    "image_id",
    "image_name",
    "box",
    "added_by_hand",
    "score",
    "model_label",
    "abstained",
    *[f"p_{c}" for c in CELL_CLASSES],
    "nc_ratio",
    "reviewed_label",
    "reviewed_by",
    "reviewed_at",
    "final_label",
    "notice",
]
#: The summary CSV: one row, the specimen's conclusion and its sign-off.
SUMMARY_CSV_COLUMNS = [
    "specimen_accession",
    "patient_mrn",
    "conclusion_label",
    "refer",
    "reasons",
    "frames",
    "frames_labelled",
    "frames_referred",
    "white_cells",
    "target_count",
    "blasts",
    "blast_percent",
    "blast_ci95_low",
    "blast_ci95_high",
    "blast_threshold_percent",
    "blasts_over_threshold",
    "checks",
    "signed_off",
    "final_label",
    "decision",
    "reviewer",
    "signed_at",
    "comment",
    "notice",
]

CSV_COLUMNS = [
    "analysis_id",
    "created_at",
    "patient_mrn",
    "specimen_accession",
    "image_id",
    "image_name",
    "image_final_label",
    "image_consensus",
    "consensus_agreement",
    "consensus_method",
    "consensus_refer_reason",
    "model",
    "model_version",
    "status",
    "label",
    "confidence",
    *[f"p_{c}" for c in CLASS_LABELS],
    "malignant_probability",
    "abstained",
    "latency_ms",
    "error_code",
    "error_message",
    "review_decision",
    "final_label",
    "reviewer",
    "signed_at",
    "notice",
]


def analyses_in_range(start: date, end: date) -> QuerySet[Analysis]:
    """Analyses created from ``start`` 00:00 to ``end`` 24:00 (UTC), oldest first."""
    tz = timezone.get_current_timezone()
    lo = datetime.combine(start, time.min, tzinfo=tz)
    hi = datetime.combine(end + timedelta(days=1), time.min, tzinfo=tz)
    return (
        Analysis.objects.filter(created_at__gte=lo, created_at__lt=hi)
        .select_related("image__specimen__patient", "image__review", "review")
        .prefetch_related("image__analyses")
        .order_by("created_at", "id")
    )


def sign_off_text(image: Image, analyses: Sequence[Analysis], agreed: Consensus | None) -> str:
    """The image's result as a report leads with it: the reviewer's final label, else the consensus
    (``agreed``, the consensus of ``analyses``, which the caller has computed for the page)."""
    review = image.signed_review
    said = (f"{agreed.label} ({agreed.agreement})" if agreed.label else "no consensus") if agreed else "no result"
    if review is not None:
        how = "agreed with the consensus" if review.decision == "agree" else f"reclassified; the consensus was {said}"
        comment = f': "{review.comment}"' if review.comment else ""
        return (
            f"Final: {review.final_label}, signed off by {review.reviewer_name} at "
            f"{timezone.localtime(review.signed_at):%Y-%m-%d %H:%M} ({how}){comment}"
        )
    legacy = [f"{a.model_name}: {r.final_label}" for a in analyses if (r := a.signed_review) is not None]
    if legacy:
        return f"Signed off per model (earlier version): {', '.join(legacy)}. Consensus: {said}"
    return f"Not signed off yet. Consensus of the models: {said}"


def csv_bytes(analyses: Iterable[Analysis]) -> bytes:
    """One row per analysis; beside it the consensus of every model of its image (empty label: refer)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    agreed: dict[int, Consensus | None] = {}
    for a in analyses:
        r = a.image.signed_review or a.signed_review  # the image's sign-off (per model in earlier versions)
        specimen = a.image.specimen
        if a.image_id not in agreed:
            agreed[a.image_id] = consensus(list(a.image.analyses.all()))
        c = agreed[a.image_id]
        writer.writerow(
            [
                a.pk,
                a.created_at.isoformat(),
                specimen.patient.mrn,
                specimen.accession,
                a.image_id,
                a.image.original_name,
                r.final_label if r else "",
                (c.label or "") if c else "",
                c.agreement if c else "",
                c.method if c else "",
                c.refer_text if c else "",
                a.model_name,
                a.model_version,
                a.status,
                a.label,
                "" if a.confidence is None else f"{a.confidence:.4f}",
                *["" if c not in a.probabilities else f"{a.probabilities[c]:.4f}" for c in CLASS_LABELS],
                "" if a.malignant_probability is None else f"{a.malignant_probability:.4f}",
                a.abstained,
                "" if a.latency_ms is None else a.latency_ms,
                a.error_code,
                a.error_message,
                r.decision if r else "",
                r.final_label if r else "",
                r.reviewer_name if r else "",
                r.signed_at.isoformat() if r else "",
                DISCLAIMER,
            ]
        )
    return out.getvalue().encode("utf-8")


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def differential_csv_bytes(specimen: Specimen) -> bytes:
    """The differential: the white-cell types and the unclassified white cells (count, percent of the white
    cells and its 95% Wilson interval), the white-cell total, then the nucleated red cells (count, per 100
    white cells), the platelets (count) and the excluded artefacts (count); ``group`` says which."""
    diff = differential(specimen_cells(specimen))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(DIFFERENTIAL_CSV_COLUMNS)
    head = [specimen.accession, specimen.patient.mrn]
    for row in diff.white_rows:
        low, high = row.interval or (None, None)
        cells = [row.category, row.group, row.count, _fmt(row.percent), _fmt(low), _fmt(high), ""]
        writer.writerow([*head, *cells, DISCLAIMER])
    total = "100.0" if diff.white_cells else "0.0"
    writer.writerow([*head, "white_cells", "white", diff.white_cells, total, "", "", "", DISCLAIMER])
    for row in (diff.nrbc, diff.platelets, diff.artefacts):
        cells = [row.category, row.group, row.count, "", "", "", _fmt(row.per_100_wbc)]
        writer.writerow([*head, *cells, DISCLAIMER])
    return out.getvalue().encode("utf-8")


def cells_csv_bytes(specimen: Specimen) -> bytes:
    """Every cell of the specimen: where it is, the model's answer, the technologist's type, the final type."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CELLS_CSV_COLUMNS)
    for c in specimen_cells(specimen):
        writer.writerow(
            [specimen.accession, c.pk, c.image_id, c.image.original_name, " ".join(str(v) for v in c.box), c.manual]
            + ["" if c.score is None else f"{c.score:.3f}", c.label, c.abstained]
            + ["" if k not in c.probabilities else f"{c.probabilities[k]:.4f}" for k in CELL_CLASSES]
            + ["" if c.nc_ratio is None else f"{c.nc_ratio:.3f}", c.reviewed_label or ""]
            + [
                c.reviewed_by.get_username() if c.reviewed_by else "",
                c.reviewed_at.isoformat() if c.reviewed_at else "",
                c.final_label,
                DISCLAIMER,
            ]
        )
    return out.getvalue().encode("utf-8")


def summary_csv_bytes(specimen: Specimen) -> bytes:
    """The specimen's conclusion and sign-off in one row (reasons and checks joined with " | ")."""
    conclusion = specimen_conclusion(specimen)
    review = signed_review(specimen)
    diff = conclusion.differential
    low, high = diff.blasts.interval or (None, None)
    results = [f for f in conclusion.frames if f.evidence.has_result]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(SUMMARY_CSV_COLUMNS)
    writer.writerow(
        [
            specimen.accession,
            specimen.patient.mrn,
            conclusion.label or "",
            conclusion.refer,
            " | ".join(conclusion.reasons),
            len(results),
            sum(1 for f in results if f.label),
            len(conclusion.referred_frames),
            diff.white_cells,
            conclusion.progress.target,
            diff.blasts.count,
            _fmt(diff.blast_percent),
            _fmt(low),
            _fmt(high),
            f"{BLAST_THRESHOLD_PERCENT:.1f}",
            diff.blasts_over_threshold,
            " | ".join(c.code for c in conclusion.checks),
            review is not None,
            review.final_label if review else "",
            review.decision if review else "",
            review.reviewer_name if review else "",
            review.signed_at.isoformat() if review else "",
            review.comment if review else "",
            DISCLAIMER,
        ]
    )
    return out.getvalue().encode("utf-8")
