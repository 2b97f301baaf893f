"""Exports: analyses as CSV rows and the per-specimen PDF report (reportlab)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time, timedelta
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone
from PIL import Image as PILImage

from core.registry import CELL_CLASSES
from portal.analyses import storage
from portal.analyses.cell_review import frame_reviews, specimen_cells
from portal.analyses.consensus import Consensus, consensus
from portal.analyses.differential import differential
from portal.analyses.models import CLASS_LABELS, Analysis, CellAnalysis, Image
from portal.patients.models import Specimen

__all__ = [
    "CSV_COLUMNS",
    "DIFFERENTIAL_CSV_COLUMNS",
    "DISCLAIMER",
    "analyses_in_range",
    "csv_bytes",
    "differential_csv_bytes",
    "specimen_pdf",
]

DISCLAIMER = (
    "Decision support only, not a diagnosis. Model outputs are pre-classifications for trained laboratory "
    "staff; a qualified reviewer must confirm or reclassify every result. Not validated for clinical use."
)

#: The differential CSV's summary header (then a blank line and one row per cell).
DIFFERENTIAL_CSV_COLUMNS = [
    "specimen_accession",
    "patient_mrn",
    "cell_type",
    "group",
    "count",
    "percent_of_white_cells",
    "per_100_white_cells",
]

CSV_COLUMNS = [
    "analysis_id",
    "created_at",
    "patient_mrn",
    "specimen_accession",
    "image_id",
    "image_name",
    "image_final_label",
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
]


def analyses_in_range(start: date, end: date) -> QuerySet[Analysis]:
    """Analyses created from ``start`` 00:00 to ``end`` 24:00 (UTC), oldest first."""
    tz = timezone.get_current_timezone()
    lo = datetime.combine(start, time.min, tzinfo=tz)
    hi = datetime.combine(end + timedelta(days=1), time.min, tzinfo=tz)
    return (
        Analysis.objects.filter(created_at__gte=lo, created_at__lt=hi)
        .select_related("image__specimen__patient", "image__review", "review")
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
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for a in analyses:
        r = a.image.signed_review or a.signed_review  # the image's sign-off (per model in earlier versions)
        specimen = a.image.specimen
        writer.writerow(
            [
                a.pk,
                a.created_at.isoformat(),
                specimen.patient.mrn,
                specimen.accession,
                a.image_id,
                a.image.original_name,
                r.final_label if r else "",
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
            ]
        )
    return out.getvalue().encode("utf-8")


def differential_csv_bytes(specimen: Specimen) -> bytes:
    """The differential, then every cell with its model and final type.

    Summary rows: the white-cell types and the unclassified white cells (count, percent of the white
    cells), the white-cell total, then the nucleated red cells (count, per 100 white cells), the platelets
    (count) and the excluded artefacts (count); ``group`` says which (portal.analyses.differential).
    """
    cells = list(specimen_cells(specimen))
    diff = differential(cells)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(DIFFERENTIAL_CSV_COLUMNS)
    head = [specimen.accession, specimen.patient.mrn]

    def fmt(value: float | None) -> str:
        return "" if value is None else f"{value:.1f}"

    for row in diff.white_rows:
        writer.writerow([*head, row.category, row.group, row.count, fmt(row.percent), ""])
    writer.writerow([*head, "white_cells", "white", diff.white_cells, "100.0" if diff.white_cells else "0.0", ""])
    for row in (diff.nrbc, diff.platelets, diff.artefacts):
        writer.writerow([*head, row.category, row.group, row.count, "", fmt(row.per_100_wbc)])
    writer.writerow([])
    writer.writerow(
        ["cell_id", "image_id", "image_name", "box", "score", "model_label", "abstained"]
        + [f"p_{c}" for c in CELL_CLASSES]
        + ["nc_ratio", "reviewed_label", "reviewed_by", "reviewed_at", "final_label"]
    )
    for c in cells:
        writer.writerow(
            [c.pk, c.image_id, c.image.original_name, " ".join(str(v) for v in c.box), f"{c.score:.3f}", c.label]
            + [c.abstained]
            + ["" if k not in c.probabilities else f"{c.probabilities[k]:.4f}" for k in CELL_CLASSES]
            + ["" if c.nc_ratio is None else f"{c.nc_ratio:.3f}", c.reviewed_label or ""]
            + [
                c.reviewed_by.get_username() if c.reviewed_by else "",
                c.reviewed_at.isoformat() if c.reviewed_at else "",
            ]
            + [c.final_label]
        )
    return out.getvalue().encode("utf-8")


def specimen_pdf(specimen: Specimen, generated_by: str) -> bytes:
    """A printable A4 report: patient, specimen, every image with its heatmaps, the model answers,
    consensus and sign-offs, the white-cell differential, the decision-support notice, page numbers."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Image as PdfImage
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    def picture(name: str, width_mm: float) -> Any:
        try:
            data = storage.read(name)
            with PILImage.open(io.BytesIO(data)) as im:
                w, h = im.size
        except (OSError, ValueError):
            return Paragraph("(file missing)", styles["Normal"])
        return PdfImage(io.BytesIO(data), width=width_mm * mm, height=width_mm * mm * h / w)

    def footer(canvas: Any, document: Any) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7)
        canvas.drawString(15 * mm, 8 * mm, f"{specimen.accession} · decision support only, not a diagnosis")
        canvas.drawRightString(A4[0] - 15 * mm, 8 * mm, f"Page {document.page}")
        canvas.restoreState()

    styles = getSampleStyleSheet()
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=15 * mm,
        title=f"Report {specimen.accession}",
    )
    patient = specimen.patient
    story = [
        Paragraph("Peripheral blood smear analysis report", styles["Title"]),
        Paragraph(f"<b>{DISCLAIMER}</b>", styles["Normal"]),
        Spacer(1, 4 * mm),
        Paragraph(
            f"Patient: {patient.name} &middot; MRN {patient.mrn} &middot; DOB {patient.date_of_birth} "
            f"&middot; sex {patient.get_sex_display()}",
            styles["Normal"],
        ),
        Paragraph(
            f"Specimen {specimen.accession} ({specimen.get_kind_display()}, {specimen.stain}), collected "
            f"{specimen.collected_at:%Y-%m-%d %H:%M} by {specimen.collected_by or '-'}",
            styles["Normal"],
        ),
        Paragraph(f"Generated {timezone.now():%Y-%m-%d %H:%M} UTC by {generated_by}", styles["Normal"]),
        Spacer(1, 4 * mm),
    ]
    for image in specimen.images.order_by("uploaded_at", "id").select_related("review").prefetch_related("analyses"):
        analyses = list(image.analyses.all())
        story.append(
            Paragraph(f"Image {image.pk}: {image.original_name} ({image.width}x{image.height})", styles["Heading3"])
        )
        story.append(Paragraph(sign_off_text(image, analyses, consensus(analyses)), styles["Normal"]))
        with_heatmap = [a for a in analyses if a.heatmap_name]
        pictures = [picture(image.storage_name, 55)] + [picture(a.heatmap_name, 30) for a in with_heatmap]
        captions = ["original"] + [f"{a.model_name} heatmap ({a.heatmap_label})" for a in with_heatmap]
        cell_job = CellAnalysis.objects.filter(image=image).first()
        if cell_job is not None and cell_job.annotated_name:
            pictures.append(picture(cell_job.annotated_name, 40))
            captions.append(f"{cell_job.model_name}: {image.cells.count()} cells")
        gallery = Table([pictures, [Paragraph(c, styles["Normal"]) for c in captions]])
        gallery.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("FONTSIZE", (0, 1), (-1, 1), 7)]))
        story.append(gallery)
        rows = [["Model", "Version", "Status", "Label", "Confidence", "P(malignant)"]]
        for a in analyses:
            label = "refer for manual review" if a.abstained else (a.label or a.error_code or "")
            rows.append(
                [
                    a.model_name,
                    a.model_version,
                    a.status,
                    label,
                    "" if a.confidence is None else f"{a.confidence:.2f}",
                    "" if a.malignant_probability is None else f"{a.malignant_probability:.2f}",
                ]
            )
        table = Table(rows, repeatRows=1)
        table.setStyle(
            TableStyle(
                [
                    ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                    ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey),
                    ("FONTSIZE", (0, 0), (-1, -1), 8),
                ]
            )
        )
        story.append(table)
        story.append(Spacer(1, 3 * mm))
    cells = list(specimen_cells(specimen))
    if cells:
        diff = differential(cells)
        story.append(Paragraph("White-cell differential", styles["Heading2"]))
        frames = {c.image_id for c in cells}
        signed = set(frame_reviews(list(specimen.images.filter(pk__in=frames))))
        story.append(
            Paragraph(
                f"{diff.white_cells} white cells in {len(frames)} frame(s); excluded: {diff.excluded} "
                f"(artefacts, not cells); {diff.reviewed} reclassified by a technologist; "
                f"{len(frames & signed)} of {len(frames)} frame(s) signed off by a reviewer. Percentages are of "
                "the white cells (unclassified included); nucleated red cells per 100 white cells; platelets "
                "counted only.",
                styles["Normal"],
            )
        )
        nrbc = diff.nrbc_per_100_wbc
        rows = [["Cell type", "Count", "% of white cells"]]
        rows += [[r.description, str(r.count), f"{r.percent or 0.0:.1f}"] for r in diff.white_rows]
        rows.append(["White cells", str(diff.white_cells), "100.0" if diff.white_cells else "0.0"])
        rows.append(
            [diff.nrbc.description, str(diff.nrbc.count), "-" if nrbc is None else f"{nrbc:.1f} per 100 white cells"]
        )
        rows.append([diff.platelets.description, str(diff.platelets.count), "count only"])
        rows.append([f"Excluded: {diff.artefacts.description}", str(diff.excluded), "not counted"])
        table = Table(rows, repeatRows=1)
        table.setStyle(
            TableStyle(
                [
                    ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                    ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey),
                    ("FONTSIZE", (0, 0), (-1, -1), 8),
                ]
            )
        )
        story.append(table)
        story.append(Spacer(1, 3 * mm))
    story.append(Paragraph(DISCLAIMER, styles["Italic"]))
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()
