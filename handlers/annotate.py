"""The annotated image of a cell-level answer: boxes, nucleus and cell outlines, per-cell labels."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from core.cell_answer import CELL_COLOURS, UNCLASSIFIED

__all__ = ["annotate", "annotated_png_base64"]


def annotate(image: Image.Image, cells: Sequence[Mapping[str, Any]]) -> Image.Image:
    """A copy of ``image`` with every cell drawn: box and label in its type's colour, outlines.

    Line width and text size follow the image size, so a 224 px frame and a 2000 px frame both read.
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    side = min(out.size)
    width = max(1, round(side / 240))
    font_px = max(9, round(side / 40))
    font = ImageFont.load_default(size=font_px)
    for n, cell in enumerate(cells, 1):
        label = cell.get("label") or UNCLASSIFIED
        colour = CELL_COLOURS.get(label, CELL_COLOURS[UNCLASSIFIED])
        x0, y0, x1, y1 = cell["box"]
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=width)
        for key, fill in (("cell_polygon", "#ffffff"), ("nucleus_polygon", "#000000")):
            poly = [tuple(p) for p in cell.get(key) or []]
            if len(poly) >= 3:
                draw.line([*poly, poly[0]], fill=fill, width=width)
        text = f"{n} {label}"
        tx, ty = x0, max(0, y0 - font_px - 2 * width)
        box = draw.textbbox((tx, ty), text, font=font)
        draw.rectangle(box, fill=colour)
        draw.text((tx, ty), text, fill="#ffffff", font=font)
    return out


def annotated_png_base64(image: Image.Image, cells: Sequence[Mapping[str, Any]]) -> str:
    buf = io.BytesIO()
    annotate(image, cells).save(buf, format="PNG", optimize=False, compress_level=6)
    return base64.b64encode(buf.getvalue()).decode("ascii")
