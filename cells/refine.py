"""Calibration of the finder's raw output against how BCCD annotators box white cells (constants: cells.fitted).

Two corrections, both fitted on the BCCD training frames by ``python -m training.cell_eval --fit``:

- **Box.** Annotators box the whole cell generously, while the grown cytoplasm stops where the stain fades: boxes
  came out too tight (IoU 0.40-0.49 for large cells). The box is widened to at least ``BOX_MARGIN`` times the
  nucleus size (square root of its area, so the rule holds at every magnification) beyond the nucleus box on each
  side, never shrunk below the segmented cell, and clipped to the image.
- **Score.** AP ranks detections, and the confident false positives were real cells cut by the frame edge that the
  annotators left out. A logistic model of (logit of the raw size x stain score, share of the nucleus outline on
  the image edge) ranks those below whole cells.
"""

from __future__ import annotations

import math

from cells import fitted

Box = tuple[int, int, int, int]


def logit(p: float) -> float:
    p = min(max(p, 1e-3), 1.0 - 1e-3)
    return math.log(p / (1.0 - p))


def wbc_score(raw: float, edge_share: float) -> float:
    """Probability that a white-cell detection is an annotated white cell (0..1)."""
    z = fitted.SCORE_BIAS + fitted.SCORE_WEIGHTS[0] * logit(raw) + fitted.SCORE_WEIGHTS[1] * edge_share
    return round(1.0 / (1.0 + math.exp(-z)), 4)


def whole_cell_box(
    cell_box: Box, nucleus_box: Box, nucleus_area: int, shape: tuple[int, int], margin: float | None = None
) -> Box:
    """The segmented cell's box widened to ``margin`` (default: the fitted one) nucleus sizes around the nucleus."""
    m = (fitted.BOX_MARGIN if margin is None else margin) * math.sqrt(max(nucleus_area, 0))
    h, w = shape
    return (
        max(0, min(cell_box[0], math.floor(nucleus_box[0] - m))),
        max(0, min(cell_box[1], math.floor(nucleus_box[1] - m))),
        min(w, max(cell_box[2], math.ceil(nucleus_box[2] + m))),
        min(h, max(cell_box[3], math.ceil(nucleus_box[3] + m))),
    )
