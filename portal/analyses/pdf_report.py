"""The specimen's printable PDF report (reportlab, A4), opening with the specimen's one conclusion.

Order: title and the decision-support notice; patient and specimen; **the specimen conclusion**
(portal.analyses.conclusion: the class or the referral with every reason, the sign-off with its
interpretive comment, the blasts against the acute-leukaemia line, the count against its target, the
agreement checks); the pooled white-cell differential with the 95% intervals (blasts set apart); then
each frame: its result, its pictures and its models' answers.

Layout rules, each the fix of something a reader saw go wrong (tests/portal/test_pdf_layout.py renders
every page to PNG and checks them):

- pictures sit in a grid of fixed columns, each scaled to fit its own cell (width and height), so no
  picture can overlap another, however wide or tall the originals are;
- each grid row is a table of its own, and long tables repeat their header, so a page break falls
  between rows instead of pushing one oversized row per page;
- captions and model names are never split inside a word (``splitLongWords`` off; the columns are wide
  enough for every registered model name).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from django.utils import timezone
from PIL import Image as PILImage
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Flowable, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
from reportlab.platypus import Image as PdfImage

from core.cell_answer import CELL_COLOURS
from portal.analyses import storage
from portal.analyses.conclusion import SpecimenConclusion
from portal.analyses.consensus import consensus
from portal.analyses.differential import BLAST
from portal.analyses.models import CellAnalysis, Image, SpecimenReview
from portal.analyses.reports import DISCLAIMER, sign_off_text
from portal.analyses.specimen_summary import signed_review, specimen_conclusion
from portal.patients.models import Specimen

__all__ = ["GRID_COLUMNS", "MARGIN_MM", "PICTURE_MAX_HEIGHT_MM", "build_pdf"]

MARGIN_MM = 15
#: pictures per grid row, and the tallest a picture may be
GRID_COLUMNS = 3
PICTURE_MAX_HEIGHT_MM = 52.0
_CELL_PAD_MM = 2.0
_BLAST_BACKGROUND = colors.HexColor("#fde8e8")

_STYLES = getSampleStyleSheet()
_BODY = ParagraphStyle("body", parent=_STYLES["Normal"], fontSize=9, leading=11.5)
_SMALL = ParagraphStyle("small", parent=_BODY, fontSize=7.5, leading=9, splitLongWords=0)
_CELL = ParagraphStyle("cell", parent=_BODY, fontSize=8, leading=10, splitLongWords=0)
_STRONG = ParagraphStyle("strong", parent=_BODY, fontName="Helvetica-Bold", fontSize=11, leading=14)
_H2 = ParagraphStyle("h2", parent=_STYLES["Heading2"], keepWithNext=1)  # a heading never ends a page
_H3 = ParagraphStyle("h3", parent=_STYLES["Heading3"], keepWithNext=1)
_GRID = TableStyle(
    [
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
        ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey),
        ("FONTSIZE", (0, 0), (-1, -1), 8),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]
)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _width() -> float:
    return A4[0] - 2 * MARGIN_MM * mm


def _picture(name: str, max_w: float, max_h: float) -> Flowable:
    """The stored picture scaled to fit max_w x max_h (points), aspect kept; a note when it is missing."""
    try:
        data = storage.read(name)
        with PILImage.open(io.BytesIO(data)) as im:
            w, h = im.size
    except (OSError, ValueError):
        return Paragraph("(file missing)", _SMALL)
    scale = min(max_w / w, max_h / h)
    return PdfImage(io.BytesIO(data), width=w * scale, height=h * scale)


def _grid(items: Sequence[tuple[str, str]]) -> list[Flowable]:
    """(stored picture, caption) in rows of GRID_COLUMNS fixed-width cells: one table per row."""
    col = _width() / GRID_COLUMNS
    max_w, max_h = col - 2 * _CELL_PAD_MM * mm, PICTURE_MAX_HEIGHT_MM * mm
    rows: list[Flowable] = []
    for start in range(0, len(items), GRID_COLUMNS):
        chunk = items[start : start + GRID_COLUMNS]
        cells: list[Any] = [[_picture(name, max_w, max_h), Paragraph(_esc(caption), _SMALL)] for name, caption in chunk]
        cells += ["" for _ in range(GRID_COLUMNS - len(chunk))]
        table = Table([cells], colWidths=[col] * GRID_COLUMNS, hAlign="LEFT")
        table.setStyle(
            TableStyle(
                [
                    ("VALIGN", (0, 0), (-1, -1), "TOP"),
                    ("LEFTPADDING", (0, 0), (-1, -1), _CELL_PAD_MM * mm),
                    ("RIGHTPADDING", (0, 0), (-1, -1), _CELL_PAD_MM * mm),
                ]
            )
        )
        rows.append(table)
    return rows


def _conclusion_section(conclusion: SpecimenConclusion, review: SpecimenReview | None) -> list[Flowable]:
    diff = conclusion.differential
    colour = "#b00020" if conclusion.refer else "#000000"
    rows: list[list[Any]] = [
        ["Conclusion", Paragraph(f'<font color="{colour}">{_esc(conclusion.label_text)}</font>', _STRONG)]
    ]
    if review is not None:
        how = "agreed with the portal's conclusion" if review.decision == "agree" else "set the class"
        rows.append(
            [
                "Sign-off",
                Paragraph(
                    f"<b>{_esc(review.final_label)}</b>, signed off by {_esc(review.reviewer_name)} at "
                    f"{timezone.localtime(review.signed_at):%Y-%m-%d %H:%M} ({how})",
                    _CELL,
                ),
            ]
        )
        rows.append(["Interpretation", Paragraph(_esc(review.comment), _CELL)])
    else:
        rows.append(["Sign-off", Paragraph("Not signed off yet: this conclusion is preliminary.", _CELL)])
    rows.append(["Blasts", Paragraph(_esc(diff.blast_text), _CELL)])
    rows.append(["Count", Paragraph(_esc(conclusion.progress.text), _CELL)])
    rows.append(["Frames", Paragraph(_esc(conclusion.frames_text), _CELL)])
    referred = ", ".join(f.evidence.name for f in conclusion.referred_frames) or "none"
    rows.append(["Referred frames", Paragraph(_esc(referred), _CELL)])
    if conclusion.reasons:
        rows.append(["Why refer", [Paragraph(f"&bull; {_esc(r)}", _CELL) for r in conclusion.reasons]])
    checks = [Paragraph(f"&bull; {_esc(c.text)}", _CELL) for c in conclusion.checks]
    rows.append(["Agreement checks", checks or Paragraph("frames and cells agree", _CELL)])
    if conclusion.notes:
        rows.append(["Notes", [Paragraph(f"&bull; {_esc(n)}", _CELL) for n in conclusion.notes]])
    table = Table(rows, colWidths=[32 * mm, _width() - 32 * mm], hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("BOX", (0, 0), (-1, -1), 0.8, colors.black),
                ("LINEBELOW", (0, 0), (-1, -2), 0.25, colors.grey),
                ("FONTNAME", (0, 0), (0, -1), "Helvetica-Bold"),
                ("FONTSIZE", (0, 0), (0, -1), 8),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    return [Paragraph("Specimen conclusion", _H2), table, Spacer(1, 4 * mm)]


def _differential_section(conclusion: SpecimenConclusion) -> list[Flowable]:
    diff = conclusion.differential
    frames = [f for f in conclusion.frames if f.evidence.cells_done]
    signed = sum(1 for f in frames if f.source == "signed")
    intro = (
        f"{diff.white_cells} white cells in {len(frames)} frame(s); excluded: {diff.excluded} (artefacts, not cells); "
        f"{diff.reviewed} reclassified by a technologist; {diff.added} added by hand; {signed} of {len(frames)} "
        "frame(s) signed off by a reviewer. Percentages are of the white cells (unclassified included), with their "
        "95% Wilson score interval; nucleated red cells per 100 white cells; platelets counted only."
    )
    rows: list[list[Any]] = [["Cell type", "Count", "% of white cells", "95% interval"]]
    blast_row = 0
    for r in diff.white_rows:
        interval = "-" if r.interval is None else f"{r.interval[0]:.1f}-{r.interval[1]:.1f}"
        rows.append([Paragraph(_esc(r.description), _CELL), str(r.count), f"{r.percent or 0.0:.1f}", interval])
        if r.category == BLAST:  # bold and in the blasts' colour (a Paragraph carries its own font)
            blast_row = len(rows) - 1
            rows[-1][0] = Paragraph(f'<font color="{CELL_COLOURS[BLAST]}"><b>{_esc(r.description)}</b></font>', _CELL)
    rows.append(["White cells", str(diff.white_cells), "100.0" if diff.white_cells else "0.0", ""])
    nrbc = diff.nrbc_per_100_wbc
    per_100 = "-" if nrbc is None else f"{nrbc:.1f} per 100 white cells"
    rows.append([Paragraph(_esc(diff.nrbc.description), _CELL), str(diff.nrbc.count), per_100, ""])
    rows.append([diff.platelets.description, str(diff.platelets.count), "count only", ""])
    rows.append([f"Excluded: {diff.artefacts.description}", str(diff.excluded), "not counted", ""])
    widths = [70 * mm, 25 * mm, 45 * mm, 40 * mm]
    table = Table(rows, colWidths=widths, repeatRows=1, hAlign="LEFT")
    table.setStyle(_GRID)
    table.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, blast_row), (-1, blast_row), _BLAST_BACKGROUND),
                ("FONTNAME", (0, blast_row), (-1, blast_row), "Helvetica-Bold"),
                ("TEXTCOLOR", (1, blast_row), (-1, blast_row), colors.HexColor(CELL_COLOURS[BLAST])),
            ]
        )
    )
    return [
        Paragraph("White-cell differential", _H2),
        Paragraph(_esc(intro), _BODY),
        Paragraph(f"<b>{_esc(diff.blast_text)}.</b>", _BODY),
        Spacer(1, 2 * mm),
        table,
        Spacer(1, 4 * mm),
    ]


def _frame_section(image: Image) -> list[Flowable]:
    analyses = list(image.analyses.all())
    out: list[Flowable] = [
        Paragraph(f"Image {image.pk}: {_esc(image.original_name)} ({image.width}x{image.height})", _H3),
        Paragraph(_esc(sign_off_text(image, analyses, consensus(analyses))), _BODY),
        Spacer(1, 2 * mm),
    ]
    items = [(image.storage_name, "original")]
    items += [(a.heatmap_name, f"{a.model_name} heatmap ({a.heatmap_label})") for a in analyses if a.heatmap_name]
    cell_job = CellAnalysis.objects.filter(image=image).first()
    if cell_job is not None and cell_job.annotated_name:
        items.append((cell_job.annotated_name, f"{cell_job.model_name}: {image.cells.count()} cells"))
    out += _grid(items)
    rows: list[list[Any]] = [["Model", "Version", "Status", "Label", "Confidence", "P(malignant)"]]
    for a in analyses:
        label = "refer for manual review" if a.abstained else (a.label or a.error_code or "")
        rows.append(
            [
                Paragraph(_esc(a.model_name), _CELL),
                a.model_version,
                a.status,
                Paragraph(_esc(label), _CELL),
                "" if a.confidence is None else f"{a.confidence:.2f}",
                "" if a.malignant_probability is None else f"{a.malignant_probability:.2f}",
            ]
        )
    widths = [44 * mm, 16 * mm, 18 * mm, 52 * mm, 24 * mm, 26 * mm]
    table = Table(rows, colWidths=widths, repeatRows=1, hAlign="LEFT")
    table.setStyle(_GRID)
    return [*out, Spacer(1, 1 * mm), table, Spacer(1, 4 * mm)]


def build_pdf(specimen: Specimen, generated_by: str) -> bytes:
    """The report as PDF bytes, with the notice in every page's footer and page numbers."""

    def footer(canvas: Any, document: Any) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7)
        canvas.drawString(MARGIN_MM * mm, 8 * mm, f"{specimen.accession} · decision support only, not a diagnosis")
        canvas.drawRightString(A4[0] - MARGIN_MM * mm, 8 * mm, f"Page {document.page}")
        canvas.restoreState()

    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=MARGIN_MM * mm,
        rightMargin=MARGIN_MM * mm,
        topMargin=MARGIN_MM * mm,
        bottomMargin=MARGIN_MM * mm,
        title=f"Report {specimen.accession}",
    )
    patient = specimen.patient
    conclusion = specimen_conclusion(specimen)
    story: list[Flowable] = [
        Paragraph("Peripheral blood smear analysis report", _STYLES["Title"]),
        Paragraph(f"<b>{_esc(DISCLAIMER)}</b>", _BODY),
        Spacer(1, 3 * mm),
        Paragraph(
            f"Patient: {_esc(patient.name)} &middot; MRN {_esc(patient.mrn)} &middot; DOB {patient.date_of_birth} "
            f"&middot; sex {patient.get_sex_display()}",
            _BODY,
        ),
        Paragraph(
            f"Specimen {_esc(specimen.accession)} ({specimen.get_kind_display()}, {_esc(specimen.stain)}), collected "
            f"{specimen.collected_at:%Y-%m-%d %H:%M} by {_esc(specimen.collected_by or '-')}",
            _BODY,
        ),
        Paragraph(f"Generated {timezone.now():%Y-%m-%d %H:%M} UTC by {_esc(generated_by)}", _BODY),
        Spacer(1, 2 * mm),
    ]
    story += _conclusion_section(conclusion, signed_review(specimen))
    if conclusion.differential.counted or conclusion.differential.excluded:
        story += _differential_section(conclusion)
    images = list(specimen.images.order_by("uploaded_at", "id").select_related("review").prefetch_related("analyses"))
    if images:
        story.append(Paragraph("Frames", _H2))
    for image in images:
        story += _frame_section(image)
    story.append(Paragraph(_esc(DISCLAIMER), _STYLES["Italic"]))
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()
