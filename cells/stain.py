"""Stain channels and image-derived scale: what makes the finder work across cameras, stains and magnifications.

Every smear we see (BCCD, PBC/CellaVision, the B-ALL frames) is a Romanowsky-type stain (Giemsa, May-Grünwald-
Giemsa, Wright): nuclear chromatin absorbs green light far more than blue, red cells absorb both about equally.
In optical density (Beer-Lambert, OD = -log(I / I_background)) the difference ``OD_green - OD_blue`` is therefore
a nucleus channel that is bright on nuclei and near zero on background and red cells, whatever the white balance
(measured on BCCD train masks: nucleus median 0.51, red cells 90th percentile 0.10).

Pixel sizes differ 5-10x between data sets, so no size is written in pixels: the red-cell radius, measured from
the image itself, is the unit for every area and morphology radius.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

#: Percentile of each channel taken as the bright (background) level; needs >= ~5% of the image to be background.
BACKGROUND_PERCENTILE = 95.0
#: The nucleus threshold never goes below the red-cell level of the nucleus channel plus this margin (OD units);
#: what keeps a frame without any white cell from having its red cells split in two by Otsu.
MIN_NUCLEUS_CONTRAST = 0.15
#: Total OD below which a pixel is bare glass, and the least share of such pixels a smear image shows.
BACKGROUND_DENSITY = 0.15
MIN_BACKGROUND_SHARE = 0.05
#: A region whose area is at most this times its inscribed disc's counts as one cell (not a clump).
SINGLE_CELL_AREA_RATIO = 1.6
#: ... but only when single cells make up at least this share of the stained area (else they are fragments),
#: or number at least ``SINGLE_CELL_MIN_COUNT``: a crowded B-ALL frame whose touching blasts and red cells form
#: one large region still shows a dozen lone red cells, and that region's inscribed radius (2-5x a red cell's)
#: must not set the unit (it did on 15% of the all4 frames, which then merged every touching cell into one).
SINGLE_CELL_MIN_SHARE = 0.2
SINGLE_CELL_MIN_COUNT = 8
#: Red-cell radius used when the image has too few cells to measure one (fraction of the shorter side).
FALLBACK_RADIUS_FRACTION = 0.05
#: Cross-check of the red-cell radius on crowded frames (see ``_anucleate_radius``). Red cells have no nucleus: a
#: stained region holding more than ``NUCLEATED_SHARE`` nucleus pixels is, or contains, a white cell. When the
#: frame shows at least ``ROUND_NUCLEI_MIN`` whole round nuclei (area at most ``ROUND_NUCLEUS_AREA`` times their
#: inscribed disc, whose radius is at least ``ROUND_NUCLEUS_WIDTH`` red-cell radii measured on the nucleus-free
#: regions: lymphocytes and blasts, whose nucleus is about a red cell wide or wider) and the estimate over all
#: regions exceeds ``IMPLAUSIBLE_RATIO`` times the one over nucleus-free regions, the clumps of touching blasts set
#: the unit (2-6x a red cell on crowded B-ALL frames, which then dropped the blasts' nuclei as specks) and the
#: nucleus-free estimate is used. A frame with one or two white cells (every BCCD frame) keeps its estimate.
NUCLEATED_SHARE = 0.05
ROUND_NUCLEI_MIN = 3
ROUND_NUCLEUS_AREA = 1.5
ROUND_NUCLEUS_WIDTH = 0.7
IMPLAUSIBLE_RATIO = 1.5


@dataclass(frozen=True)
class StainMaps:
    """Per-pixel maps and per-image levels derived from one RGB image."""

    nucleus: np.ndarray  # OD_green - OD_blue, lightly smoothed (float32)
    density: np.ndarray  # total OD (float32): how much stain of any kind
    nucleus_threshold: float
    foreground: np.ndarray  # bool: any cell (red, white, platelet), holes filled
    rbc_radius: float  # pixels
    background_share: float  # fraction of pixels with (almost) no stain

    @property
    def looks_like_smear(self) -> bool:
        """A smear shows bare glass between cells; noise, photos and solid colours do not (or show no stain)."""
        return self.background_share >= MIN_BACKGROUND_SHARE and bool(self.foreground.any())


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 OD against the image's own bright level (no calibration frame exists for uploaded images)."""
    f = rgb.astype(np.float32) + 1.0
    bright = np.percentile(f.reshape(-1, 3), BACKGROUND_PERCENTILE, axis=0)
    return np.maximum(-np.log(np.clip(f / np.maximum(bright, 1.0), 1e-3, None)), 0.0)


def _otsu(values: np.ndarray, default: float) -> float:
    if values.size < 16 or float(values.max()) - float(values.min()) < 1e-6:
        return default
    return float(threshold_otsu(values, nbins=128))


def _rbc_radius(foreground: np.ndarray) -> float:
    """Area-weighted median over connected cell regions of their largest inscribed radius.

    Red cells dominate every smear's stained area. Clumps of touching red cells still have the inscribed radius
    of one cell, which is why the maximum of the distance transform is used rather than the area; weighting by
    area keeps dust and stain specks (many, tiny) from pulling the estimate down.
    """
    fallback = max(FALLBACK_RADIUS_FRACTION * min(foreground.shape), 2.0)
    labels, n = ndi.label(foreground)
    if n == 0:
        return fallback
    index = np.arange(1, n + 1)
    dist = ndi.distance_transform_edt(foreground)
    peaks = np.asarray(ndi.maximum(dist, labels, index=index), dtype=np.float64)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
    # Regions about as large as their inscribed disc are single cells; prefer them over clumps when there are any.
    single = (areas <= SINGLE_CELL_AREA_RATIO * np.pi * peaks**2) & (peaks >= 2.0)
    enough = areas[single].sum() >= max(50.0, SINGLE_CELL_MIN_SHARE * areas.sum())
    if enough or int(single.sum()) >= SINGLE_CELL_MIN_COUNT:
        peaks, areas = peaks[single], areas[single]
    order = np.argsort(peaks)
    cumulative = np.cumsum(areas[order])
    if cumulative[-1] < 50:
        return fallback
    return max(float(peaks[order][np.searchsorted(cumulative, cumulative[-1] / 2)]), 2.0)


def _anucleate_radius(foreground: np.ndarray, nuclei: np.ndarray, radius: float) -> float:
    """``radius``, or the red-cell radius of the regions without nucleus pixels where ``radius`` is implausible.

    ``foreground`` is the (opened) stained-region mask ``radius`` was measured on, ``nuclei`` the nucleus pixels.
    See ``NUCLEATED_SHARE``: on a crowded frame the regions of touching blasts and red cells outweigh the lone red
    cells, and their inscribed radius is a blast's or a clump's, not a red cell's.
    """
    labels, n = ndi.label(foreground)
    if n == 0:
        return radius
    share = np.asarray(ndi.mean(nuclei, labels, index=np.arange(1, n + 1)))
    anucleate = foreground & ~np.isin(labels, np.flatnonzero(share > NUCLEATED_SHARE) + 1)
    if anucleate.sum() < 50:
        return radius
    plain = _rbc_radius(anucleate)
    if radius <= IMPLAUSIBLE_RATIO * plain:
        return radius
    nl, nn = ndi.label(nuclei)
    if nn < ROUND_NUCLEI_MIN:
        return radius
    index = np.arange(1, nn + 1)
    peaks = np.asarray(ndi.maximum(ndi.distance_transform_edt(nuclei), nl, index=index), dtype=np.float64)
    areas = np.bincount(nl.ravel(), minlength=nn + 1)[1:].astype(np.float64)
    round_ = (areas <= ROUND_NUCLEUS_AREA * np.pi * peaks**2) & (peaks >= ROUND_NUCLEUS_WIDTH * plain)
    return plain if int(round_.sum()) >= ROUND_NUCLEI_MIN else radius


def stain_maps(rgb: np.ndarray) -> StainMaps:
    """Nucleus channel, density, the image's nucleus threshold, cell foreground and red-cell radius."""
    od = optical_density(rgb)
    nucleus = ndi.gaussian_filter(od[..., 1] - od[..., 2], 1.0).astype(np.float32)
    density = od.sum(axis=-1)
    # Cells vs background: Otsu on density of the non-nuclear pixels (nuclei are so dark in some stains that
    # they would otherwise take the cell/background split for themselves).
    rough_nucleus = nucleus > _otsu(nucleus, 1.0)
    rest = density[~rough_nucleus]
    fg_threshold = max(_otsu(rest[:: max(1, rest.size // 200_000)], 0.3), 0.05)
    foreground = ndi.binary_fill_holes(density > fg_threshold)
    opened = ndi.binary_opening(foreground, iterations=1)
    radius = _rbc_radius(opened)
    # Nucleus vs every other cell pixel: Otsu inside the foreground, floored at the red-cell level + a margin.
    inside = nucleus[foreground]
    rbc_level = float(np.median(inside)) if inside.size else 0.0
    threshold = max(_otsu(inside, rbc_level + MIN_NUCLEUS_CONTRAST), rbc_level + MIN_NUCLEUS_CONTRAST)
    radius = _anucleate_radius(opened, nucleus > threshold, radius)
    background_share = float((density < BACKGROUND_DENSITY).mean())
    return StainMaps(nucleus, density.astype(np.float32), threshold, foreground, radius, background_share)
