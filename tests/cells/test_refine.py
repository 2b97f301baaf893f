"""The fitted calibration (cells.refine / cells.fitted) and the nucleus-core refinement, on real and synthetic data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import cells.fitted as fitted
from cells import find_cells, segment_masks
from cells.refine import wbc_score, whole_cell_box
from core.paths import BCCD
from training.cell_eval import FITTED_HEADER, fit_logistic, fit_margin


def test_fitted_module_is_generated_and_sane() -> None:
    source = Path(fitted.__file__).read_text(encoding="utf-8")
    assert source.startswith(FITTED_HEADER.split("{")[0])
    assert 0.0 < fitted.BOX_MARGIN <= 0.4
    assert fitted.SCORE_WEIGHTS[0] > 0  # a stronger raw detection scores higher
    assert fitted.SCORE_WEIGHTS[1] < 0  # a cell cut by the frame edge scores lower


def test_edge_cut_cells_rank_below_whole_ones() -> None:
    assert wbc_score(0.9, 0.0) > wbc_score(0.9, 0.8)
    assert wbc_score(0.95, 0.0) > wbc_score(0.5, 0.0)
    assert 0.0 <= wbc_score(0.0, 5.0) <= wbc_score(1.0, 0.0) <= 1.0


def test_whole_cell_box_widens_never_shrinks_and_stays_inside() -> None:
    cell, nucleus = (100, 100, 160, 150), (110, 105, 150, 145)
    box = whole_cell_box(cell, nucleus, 1600, (480, 640), margin=0.25)
    assert box == (100, 95, 160, 155)  # 10 px = 0.25 * sqrt(1600) beyond the nucleus; the cell already reaches x
    assert whole_cell_box(cell, nucleus, 1600, (480, 640), margin=0.0) == cell
    edge = whole_cell_box((0, 0, 30, 30), (0, 0, 28, 28), 600, (40, 40), margin=1.0)
    assert edge[0] == 0 and edge[1] == 0 and edge[2] <= 40 and edge[3] <= 40


def test_fit_margin_recovers_a_known_margin() -> None:
    rows = []
    for k in range(12):
        x0, y0, side = 50 + 40 * k, 60, 40 + 3 * k
        m = round(0.2 * side)  # nucleus area side**2 -> the true box is 0.2 nucleus sizes wider on every side
        rows.append(
            {
                "gts": [[x0 - m, y0 - m, x0 + side + m, y0 + side + m]],
                "shape": (1000, 1000),
                "cell": (x0, y0, x0 + side, y0 + side),
                "nucleus": (x0, y0, x0 + side, y0 + side),
                "area": side * side,
            }
        )
    assert abs(fit_margin(rows) - 0.2) <= 0.025


def test_fit_logistic_separates() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = (x[:, 0] - 2 * x[:, 1] + 0.3 * rng.normal(size=400) > 0).astype(float)
    w, _ = fit_logistic(x, y)
    assert w[0] > 0 > w[1] and abs(w[1]) > abs(w[0])


def test_eosinophil_nucleus_leaves_out_the_granules() -> None:
    """BloodImage_00183 (train): without the nucleus-core step granular cytoplasm doubled the nucleus (Dice 0.67)."""
    rgb = np.asarray(Image.open(BCCD / "JPEGImages" / "BloodImage_00183.jpg").convert("RGB"))
    mask = np.asarray(Image.open(BCCD / "masks" / "BloodImage_00183.png"))
    _, nucleus, cell = segment_masks(rgb)
    assert not (nucleus & ~cell).any()
    ys, xs = np.nonzero(mask > 0)  # the mask outlines only this cell: compare inside its box
    region = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    pred, gt = nucleus[region], mask[region] == 2
    assert (
        2 * int((pred & gt).sum()) / (int(pred.sum()) + int(gt.sum())) >= 0.78
    )  # the dropped granules stay in the whole cell


def test_found_box_contains_the_outlines_after_widening() -> None:
    rgb = np.asarray(Image.open(BCCD / "JPEGImages" / "BloodImage_00022.jpg").convert("RGB"))
    for c in find_cells(rgb):
        xy = np.asarray(c.cell_polygon + c.nucleus_polygon)
        assert (xy[:, 0] >= c.box[0]).all() and (xy[:, 0] < c.box[2]).all()
        assert (xy[:, 1] >= c.box[1]).all() and (xy[:, 1] < c.box[3]).all()
