"""The PDF report rendered to PNG (pypdfium2, the PDFium renderer) and read back: nothing overlaps.

For every page: each picture lies inside the printable area (the page less its margins), no two pictures
overlap, no character is drawn over a picture or over another character (a long word running into the
next table cell), and the model names are never split inside a word; the
first page opens with the specimen conclusion; a page holds several frames' rows, not one. The pages go to
test-artifacts/pdf-report-page-N.png for a person to look at.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import pytest
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm

from portal.analyses.pdf_report import MARGIN_MM, build_pdf
from tests.conftest import REPO
from tests.portal.test_specimen import FRAME_A, FRAME_B, _frames

pytestmark = pytest.mark.django_db

MODELS = ["xception_bigru", "effnetb3_bigru", "effnetb3_vit", "mobilenetv3_lstm"]
ARTIFACTS = REPO / "test-artifacts"
Box = tuple[float, float, float, float]  # left, bottom, right, top (PDF points)


@pytest.fixture(autouse=True)
def _cells_on(settings: Any) -> None:
    settings.PORTAL_CELL_MODEL = "wbc_cells"


def _overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _text_over_text(chars: list[tuple[str, Box]]) -> list[tuple[str, str]]:
    """Pairs of visible characters whose glyph boxes cover each other by more than a third (kerned neighbours
    touch, a word written over another word's cell covers). Bucketed by 12-point squares: near pairs only."""
    buckets: dict[tuple[int, int], list[int]] = {}
    boxes = [(c, b) for c, b in chars if c.strip() and b[2] > b[0] and b[3] > b[1]]
    for i, (_, (x0, y0, x1, y1)) in enumerate(boxes):
        for bx in range(int(x0 // 12), int(x1 // 12) + 1):
            for by in range(int(y0 // 12), int(y1 // 12) + 1):
                buckets.setdefault((bx, by), []).append(i)
    clashes: set[tuple[int, int]] = set()
    for members in buckets.values():
        for i, j in combinations(members, 2):
            a, b = boxes[i][1], boxes[j][1]
            smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
            if _overlap(a, b) > smaller / 3:
                clashes.add((min(i, j), max(i, j)))
    return [(boxes[i][0], boxes[j][0]) for i, j in sorted(clashes)][:10]


def _pages(pdf: bytes) -> list[dict[str, Any]]:
    """Per page: the pictures' boxes, every character's box and the text, and the PNG written for people."""
    doc = pdfium.PdfDocument(pdf)
    ARTIFACTS.mkdir(exist_ok=True)
    pages = []
    for n in range(len(doc)):
        page = doc[n]
        images = [obj.get_bounds() for obj in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,))]
        textpage = page.get_textpage()
        chars = [(textpage.get_text_range(i, 1), textpage.get_charbox(i)) for i in range(textpage.count_chars())]
        page.render(scale=2).to_pil().save(ARTIFACTS / f"pdf-report-page-{n + 1}.png")
        pages.append({"images": images, "chars": chars, "text": textpage.get_text_range()})
    return pages


def test_pdf_pages_render_and_nothing_overlaps(technologist: Any, specimen: Any) -> None:
    # all four frame models, each with its heatmap, and the cell model's annotated image: six pictures a frame
    _frames(technologist, specimen, [FRAME_A, FRAME_B, FRAME_B], ["Pre", "Benign", "Pre"], models=MODELS)
    pdf = build_pdf(specimen, "rev")
    pages = _pages(pdf)
    left, bottom = MARGIN_MM * mm - 0.5, MARGIN_MM * mm - 0.5
    right, top = A4[0] - MARGIN_MM * mm + 0.5, A4[1] - MARGIN_MM * mm + 0.5
    pictures = 0
    for n, page in enumerate(pages, 1):
        for box in page["images"]:
            assert left <= box[0] and box[2] <= right and bottom <= box[1] and box[3] <= top, (n, box)
        for a, b in combinations(page["images"], 2):
            assert _overlap(a, b) < 1.0, f"page {n}: pictures {a} and {b} overlap"
        for char, box in page["chars"]:
            if char.strip():
                hit = [img for img in page["images"] if _overlap(box, img) > 0.5]
                assert not hit, f"page {n}: {char!r} at {box} is drawn over a picture {hit}"
        clash = _text_over_text(page["chars"])
        assert not clash, f"page {n}: text drawn over text: {clash}"
        pictures += len(page["images"])
    # every picture is there: per frame the original, four heatmaps and the cell model's annotated image
    # (identical pictures are one object, drawn as many times as they appear)
    assert pictures == 3 * 6
    text = "\n".join(p["text"] for p in pages)
    assert pages[0]["text"].index("Specimen conclusion") < pages[0]["text"].index("White-cell differential")
    for name in MODELS:  # never split inside a word: each name whole, in every model table and caption
        assert text.count(name) == 3 * 2, name
    assert "Decision support only" in pages[0]["text"] and all("not a diagnosis" in p["text"] for p in pages)
    # three frames with six pictures and four models each fit on a few pages, not one row per page
    assert len(pages) <= 4, f"{len(pages)} pages for 3 frames"
