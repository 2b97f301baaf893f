"""Mask -> closed polygon in image pixel coordinates (the contract's ``nucleus_polygon`` / ``cell_polygon``)."""

from __future__ import annotations

import numpy as np
from skimage.measure import approximate_polygon, find_contours

#: Largest distance (pixels) a simplified outline may stray from the traced one: keeps answers small.
POLYGON_TOLERANCE = 0.75


def mask_polygon(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[list[int]]:
    """Outer outline of the largest region of ``mask`` as [[x, y], ...]; ``offset`` = (x0, y0) of the crop."""
    if not mask.any():
        return []
    contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    contour = max(contours, key=len)
    contour = approximate_polygon(contour, POLYGON_TOLERANCE) - 1.0  # undo the padding
    # Contour vertices lie on half-pixel edges; clamping to the mask's pixel range keeps them inside its box.
    h, w = mask.shape
    rows = np.clip(np.round(contour[:, 0]), 0, h - 1).astype(int)
    cols = np.clip(np.round(contour[:, 1]), 0, w - 1).astype(int)
    ox, oy = offset
    points: list[list[int]] = []
    for r, c in zip(rows, cols, strict=True):
        p = [int(c) + ox, int(r) + oy]
        if not points or points[-1] != p:
            points.append(p)
    if len(points) > 1 and points[0] == points[-1]:
        points.pop()
    if len(points) < 3:  # a region of one or two pixels: its pixel box
        ys, xs = np.nonzero(mask)
        x0, x1, y0, y1 = int(xs.min()) + ox, int(xs.max()) + ox, int(ys.min()) + oy, int(ys.max()) + oy
        points = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
    return points


def polygon_area(points: list[list[int]]) -> float:
    """Shoelace area; used by tests and callers to check an outline against its pixel count."""
    if len(points) < 3:
        return 0.0
    xy = np.asarray(points, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)
