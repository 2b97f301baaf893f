"""Find, outline and measure the white cells and platelets of a smear image (classical, NumPy/SciPy/scikit-image).

Pipeline, every length in units of the image's own red-cell radius ``r`` (see :mod:`cells.stain`):

1. nucleus pixels = nucleus channel above the image's threshold; specks below ``MIN_BLOB_AREA`` dropped;
2. lobes of one nucleus (segmented neutrophils) are joined by a closing of radius ``LOBE_GAP``; holes filled;
3. touching nuclei are split by a watershed on their distance transform (markers ``SPLIT_MIN_DISTANCE`` apart);
   pieces are joined back across wide necks (lobes) unless each is a whole round nucleus (``ROUND_*``: blasts);
4. a nucleus of at least ``WBC_MIN_AREA`` (area / pi r^2) is a white cell, from ``PLATELET_MIN_AREA`` a platelet;
   a white-cell candidate with a red cell's colour (``RED_BLUE_RATIO``) and not dark is dropped (red-cell clumps);
5. the whole white cell = stained pixels connected to its nucleus within ``CYTOPLASM_REACH`` of it (neighbours
   share the space between them by nearest nucleus), smoothed by an opening that cuts bridges to red cells;
6. each white nucleus keeps only its core (``NUCLEUS_CORE`` of its own chromatin level): granules and cytoplasm
   the closing swept in become cytoplasm;
7. box and score calibrated to how annotators box white cells (:mod:`cells.refine`, fitted constants);
8. what a haematologist would not count is dropped: a white-cell candidate scored under ``WBC_MIN_SCORE`` or
   whose box is smaller than ``WBC_MIN_SIDE`` red-cell radii (stain specks, fragments: on the B-ALL frames
   these were 6-20 px boxes scored 0.00-0.24 and were counted as white cells).

Constants were tuned on the BCCD training frames only (``training.cell_eval`` measures them on validation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.segmentation import expand_labels, watershed

from cells.morph import close, open_
from cells.outline import mask_polygon
from cells.refine import wbc_score, whole_cell_box
from cells.stain import StainMaps, optical_density, stain_maps

MIN_BLOB_AREA = 0.01
LOBE_GAP = 0.35
SPLIT_MIN_DISTANCE = 0.6
NECK_RATIO = 0.45
#: Two touching pieces whose inscribed radii are both at least this (red-cell radii) stay apart whatever their
#: neck: a segmented neutrophil's lobes are narrower, touching blasts (B-ALL frames) are not. At 0.9 BCCD val
#: AP@0.5 fell 0.981 -> 0.939 (neutrophils split); at 1.2 and 1.5 it is unchanged, and 1.2 splits more of a
#: crowded Pre frame's cluster (Pre-162: 7 -> 9 white cells; 1.5: 8).
SEPARATE_NUCLEUS = 1.2
#: Two touching pieces that are each a whole round nucleus (area at most ``ROUND_AREA_RATIO`` times their inscribed
#: disc, whose radius is at least ``ROUND_NUCLEUS`` red-cell radii) stay apart when the neck between them is at
#: most ``ROUND_NECK_RATIO`` of the smaller disc's radius. Measured on the pieces the neck rule joined: touching
#: blasts of crowded B-ALL Pre frames have necks of 0.45-0.75 and areas 1.06-1.4x their disc, the round lobes of
#: BCCD val neutrophils necks of 0.88-0.91; one BCCD train cell (BloodImage_00392: 1.59x, neck 0.57) set the area
#: ratio at 1.5 (training.finder_eval: boxes over two B-ALL reference cells 47 -> 33, BCCD AP unchanged).
ROUND_NUCLEUS = 0.7
ROUND_AREA_RATIO = 1.5
ROUND_NECK_RATIO = 0.7
WBC_MIN_AREA = 0.25
PLATELET_MIN_AREA = 0.02
PLATELET_MAX_AREA = 0.25
CYTOPLASM_REACH = 0.5
CELL_SMOOTH = 0.15
#: A white cell is at least about as large as a red cell and stands clearly above the threshold: on the BCCD
#: training frames every annotated white cell found scored >= 0.71 with a box >= 3.0 r (training.cell_eval).
WBC_MIN_SCORE = 0.3
#: A white-cell candidate whose median blue optical density reaches this share of its green one, and whose median
#: total OD is under ``DARK_DENSITY``, is red cells (a clump, crenated or overlapping ones) that passed the frame's
#: nucleus threshold (Otsu splits the red cells when a frame shows few white cells): see ``_red_like``. On 154
#: B-ALL frames (training.finder_eval) the ratio alone flags 176 of the 272 candidates the segmented twins leave
#: black and 16 of 1179 they mark (pale specks at the twins' edge, and dark nuclei the density keeps); none on
#: BCCD val. White cells outside the twins: 283 -> 134, BCCD val AP@0.5 and nucleus Dice unchanged.
RED_BLUE_RATIO = 0.3
DARK_DENSITY = 2.0
WBC_MIN_SIDE = 1.5
#: A white nucleus keeps only pixels whose nucleus channel reaches this share of its own ``CORE_PERCENTILE``
#: level: eosinophil/neutrophil granules and cytoplasm swept in by the lobe closing sit at about half of it
#: (train masks: nucleus Dice 0.902 -> 0.928 mean; 0.4-0.5 and percentiles 75-95 all within 0.005).
NUCLEUS_CORE = 0.45
CORE_PERCENTILE = 90.0
#: Larger images are box-filtered down by an integer factor until their long side fits: the finder's cost is
#: then bounded (a 640x480 frame is segmented at 320x240), at the price of outlines quantised to that factor.
WORK_SIDE = 320
#: Smallest image side the finder looks at; smaller inputs answer [] (nothing cell-sized fits).
MIN_SIDE = 8

WBC = "wbc"
PLATELET = "platelet"


@dataclass(frozen=True)
class FoundCell:
    """One white cell (or platelet) as the finder sees it, in input-image pixel coordinates."""

    kind: str  # "wbc" or "platelet"
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the whole cell (x1/y1 exclusive)
    score: float  # 0..1 detection confidence
    nucleus_polygon: list[list[int]]
    cell_polygon: list[list[int]]
    nucleus_area_px: int
    cell_area_px: int

    @property
    def nc_ratio(self) -> float:
        return self.nucleus_area_px / self.cell_area_px if self.cell_area_px else 0.0


@dataclass(frozen=True)
class Segmentation:
    """Label images behind :func:`find_cells` (label i+1 = ``kinds[i]``), for evaluation and drawing."""

    nucleus_labels: np.ndarray  # int32, 0 = none
    cell_labels: np.ndarray  # int32, same labels as nucleus_labels
    kinds: list[str]
    scores: list[float]
    maps: StainMaps | None
    #: per label: (raw size x stain score, share of the nucleus outline on the image edge), what ``scores`` came from
    features: list[tuple[float, float]] = field(default_factory=list)


def _split_touching(mask: np.ndarray, r: float) -> np.ndarray:
    """Label ``mask``, cutting blobs made of several round nuclei where they meet at a narrow neck.

    A watershed of the distance map proposes pieces; two touching pieces are merged back unless the neck between
    them is narrower than ``NECK_RATIO`` of the smaller piece's inscribed radius (lobes of one segmented nucleus
    joined by the closing have wide necks; two touching blasts a narrow one).
    """
    dist = ndi.distance_transform_edt(mask)
    labels, n = ndi.label(mask)
    if n == 0:
        return labels.astype(np.int32)
    peaks = peak_local_max(
        dist,
        min_distance=max(2, round(SPLIT_MIN_DISTANCE * r)),
        threshold_abs=0.3 * r,
        labels=labels,
        exclude_border=False,
    )
    markers = np.zeros_like(labels)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # Blobs without a peak (thin shapes) keep one marker each so they are not lost.
    missing = np.setdiff1d(np.arange(1, n + 1), np.unique(labels[markers > 0]))
    next_id = len(peaks) + 1
    for lab in missing:
        ys, xs = np.nonzero(labels == lab)
        markers[ys[0], xs[0]] = next_id
        next_id += 1
    pieces = np.asarray(watershed(-dist, markers, mask=mask), dtype=np.int32)
    return _merge_wide_necks(pieces, dist, r)


def _merge_wide_necks(pieces: np.ndarray, dist: np.ndarray, r: float = math.inf) -> np.ndarray:
    m = int(pieces.max())
    if m < 2:
        return pieces
    peak = np.concatenate([[0.0], np.asarray(ndi.maximum(dist, pieces, index=np.arange(1, m + 1)))])
    area = np.bincount(pieces.ravel(), minlength=m + 1).astype(np.float64)
    # a whole round nucleus: about as large as its inscribed disc, and that disc ROUND_NUCLEUS red-cell radii
    whole = (area <= ROUND_AREA_RATIO * np.pi * np.maximum(peak, 1e-6) ** 2) & (peak >= ROUND_NUCLEUS * r)
    parent = np.arange(m + 1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    # Neighbouring pixel pairs with different piece labels (right and down neighbours) mark the necks.
    for a, b, d in (
        (pieces[:, :-1], pieces[:, 1:], np.minimum(dist[:, :-1], dist[:, 1:])),
        (pieces[:-1, :], pieces[1:, :], np.minimum(dist[:-1, :], dist[1:, :])),
    ):
        sel = (a != b) & (a > 0) & (b > 0)
        if not sel.any():
            continue
        pa, pb, pd = a[sel], b[sel], d[sel]
        key = pa.astype(np.int64) * (m + 1) + pb
        for k in np.unique(key):
            i, j = int(k // (m + 1)), int(k % (m + 1))
            neck = float(pd[key == k].max())
            if min(peak[i], peak[j]) >= SEPARATE_NUCLEUS * r:
                continue  # two nuclei each a whole cell's width: touching cells, not lobes of one
            if whole[i] and whole[j] and neck <= ROUND_NECK_RATIO * min(peak[i], peak[j]):
                continue  # two whole round nuclei pressed together (touching blasts), not lobes of one
            if neck > NECK_RATIO * min(peak[i], peak[j]):
                parent[root(i)] = root(j)
    roots = np.array([root(i) for i in range(m + 1)])
    _, compact = np.unique(roots, return_inverse=True)
    return compact.reshape(-1)[pieces].astype(np.int32)


def _score(kind: str, area_rel: float, contrast: float) -> float:
    """Confidence from size (relative to the smallest accepted) and how far the nucleus stands above threshold."""
    floor = WBC_MIN_AREA if kind == WBC else PLATELET_MIN_AREA
    size = 1.0 - math.exp(-2.0 * area_rel / floor)
    stain = 1.0 - math.exp(-3.0 * max(contrast, 0.0))
    return round(float(size * stain), 4)


def _empty(shape: tuple[int, int], maps: StainMaps | None = None) -> Segmentation:
    zeros = np.zeros(shape, dtype=np.int32)
    return Segmentation(zeros, zeros.copy(), [], [], maps)


def segment(rgb: np.ndarray) -> Segmentation:
    """Label images of nuclei and whole cells (white cells and platelets); deterministic."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    shape = rgb.shape[:2]
    if min(shape) < MIN_SIDE:
        return _empty(shape)
    factor = max(1, math.ceil(max(shape) / WORK_SIDE))
    if factor > 1:
        small = _shrink(rgb, factor)
        seg = _segment_at(small)
        return Segmentation(
            _grow(seg.nucleus_labels, factor, shape),
            _grow(seg.cell_labels, factor, shape),
            seg.kinds,
            seg.scores,
            seg.maps,
            seg.features,
        )
    return _segment_at(rgb)


def _shrink(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter downscale by an integer factor (pads the edge by replication to a multiple of it)."""
    h, w = rgb.shape[:2]
    ph, pw = -h % factor, -w % factor
    padded = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge").astype(np.float32)
    hh, ww = padded.shape[0] // factor, padded.shape[1] // factor
    return padded.reshape(hh, factor, ww, factor, 3).mean(axis=(1, 3)).astype(np.uint8)


def _grow(labels: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upscale of a label image back to the input's size."""
    ys = np.minimum(np.arange(shape[0]) // factor, labels.shape[0] - 1)
    xs = np.minimum(np.arange(shape[1]) // factor, labels.shape[1] - 1)
    return labels[np.ix_(ys, xs)]


def _segment_at(rgb: np.ndarray) -> Segmentation:
    shape = (int(rgb.shape[0]), int(rgb.shape[1]))
    if min(shape) < MIN_SIDE:
        return _empty(shape)
    maps = stain_maps(rgb)
    if not maps.looks_like_smear:
        return _empty(shape, maps)
    r = maps.rbc_radius
    unit = math.pi * r * r
    nuclei = maps.nucleus > maps.nucleus_threshold
    labels, n = ndi.label(nuclei)
    if n == 0:
        return _empty(shape, maps)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(4.0, MIN_BLOB_AREA * unit)
    keep[0] = False
    nuclei = keep[labels]
    nuclei = ndi.binary_fill_holes(close(nuclei, LOBE_GAP * r))
    labels = _split_touching(nuclei, r)
    n = int(labels.max())
    if n == 0:
        return _empty(shape, maps)
    areas = np.bincount(labels.ravel(), minlength=n + 1) / unit
    index = np.arange(1, n + 1)
    contrast = np.asarray(ndi.mean(maps.nucleus, labels, index=index)) - maps.nucleus_threshold
    red_like = _red_like(rgb, maps, labels, index)
    kinds: list[str] = []
    scores: list[float] = []
    features: list[tuple[float, float]] = []
    edge = _edge_pixels(labels, n)
    relabel = np.zeros(n + 1, dtype=np.int32)
    for lab in range(1, n + 1):
        rel = float(areas[lab])
        if rel >= WBC_MIN_AREA:
            if red_like[lab - 1]:
                continue  # red cells (a clump, a crenated or overlapping one): no purple nucleus in it
            kind = WBC
        elif PLATELET_MIN_AREA <= rel < PLATELET_MAX_AREA:
            kind = PLATELET
        else:
            continue
        kinds.append(kind)
        raw = _score(kind, rel, float(contrast[lab - 1]) / max(maps.nucleus_threshold, 1e-3))
        edge_share = float(edge[lab]) / math.sqrt(rel * unit)
        features.append((raw, round(edge_share, 4)))
        scores.append(wbc_score(raw, edge_share) if kind == WBC else raw)
        relabel[lab] = len(kinds)
    nucleus_labels = relabel[labels]
    cells = _grow_cells(nucleus_labels, maps, kinds, r)
    nucleus_labels = _nucleus_core(nucleus_labels, maps.nucleus, kinds)
    return Segmentation(nucleus_labels, cells, kinds, scores, maps, features)


def _red_like(rgb: np.ndarray, maps: StainMaps, labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Per label: absorbs blue light about as much as green (a red cell's colour, not chromatin's) and is not dark.

    Romanowsky-stained chromatin is purple: it lets blue through (blue/green optical density ratio 0.02 median,
    0.14 at the 95th percentile of the B-ALL candidates the segmented twins mark; 0.15 at most on BCCD), red
    cells absorb both (0.42 median of the candidates the twins leave black). A very dark nucleus (a dark blast)
    absorbs blue too, so candidates of ``DARK_DENSITY`` total OD and more are never taken for red cells.
    """
    od = optical_density(rgb)
    green = np.asarray(ndi.median(od[..., 1], labels, index=index))
    blue = np.asarray(ndi.median(od[..., 2], labels, index=index))
    density = np.asarray(ndi.median(maps.density, labels, index=index))
    return (blue >= RED_BLUE_RATIO * np.maximum(green, 1e-3)) & (density < DARK_DENSITY)


def _edge_pixels(labels: np.ndarray, n: int) -> np.ndarray:
    """Per label, how many of its pixels lie on the image's outer rows/columns (cut-off cells)."""
    border = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    return np.bincount(border, minlength=n + 1)


def _nucleus_core(nucleus_labels: np.ndarray, channel: np.ndarray, kinds: list[str]) -> np.ndarray:
    """Drop from each white nucleus the pixels far below its own chromatin level (eosinophil/neutrophil
    granules and the cytoplasm the lobe closing swept in), keeping holes filled.

    Runs after the whole cell was grown from the full nucleus, so the cell outline is unchanged; the dropped
    pixels stay inside the cell (they are its cytoplasm).
    """
    out = nucleus_labels.copy()
    boxes = ndi.find_objects(nucleus_labels)
    for i, kind in enumerate(kinds):
        sl = boxes[i] if i < len(boxes) else None
        if kind != WBC or sl is None:
            continue
        mask = nucleus_labels[sl] == i + 1
        vals = channel[sl][mask]
        level = float(np.percentile(vals, CORE_PERCENTILE))
        core = mask & (channel[sl] > NUCLEUS_CORE * level)
        if not core.any():
            continue
        core = ndi.binary_fill_holes(core)
        view = out[sl]
        view[mask & ~core] = 0
    return out


def _grow_cells(nucleus_labels: np.ndarray, maps: StainMaps, kinds: list[str], r: float) -> np.ndarray:
    """Whole-cell labels: stained pixels reachable from each white nucleus; a platelet is its own outline."""
    if not kinds:
        return nucleus_labels.copy()
    wbc_ids = np.array([0] + [1 if k == WBC else 0 for k in kinds], dtype=bool)
    reach = expand_labels(nucleus_labels, distance=CYTOPLASM_REACH * r)
    stained = maps.foreground | (nucleus_labels > 0)
    grown = np.where(stained & wbc_ids[reach], reach, 0)
    out = np.where(wbc_ids[nucleus_labels], 0, nucleus_labels).astype(np.int32)
    for lab in np.flatnonzero(wbc_ids):
        region = grown == lab
        ys, xs = np.nonzero(region)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        sub = region[y0:y1, x0:x1]
        nuc = nucleus_labels[y0:y1, x0:x1] == lab
        sub = ndi.binary_fill_holes(open_(sub, CELL_SMOOTH * r) | nuc)
        comp, _ = ndi.label(sub)
        touching = np.unique(comp[nuc])
        sub = np.isin(comp, touching[touching > 0])
        view = out[y0:y1, x0:x1]
        view[sub & (view == 0)] = lab
    return out


def raw_boxes(seg: Segmentation, index: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int], int]:
    """(segmented cell box, nucleus box, nucleus area) of label ``index + 1``: the inputs of the box calibration."""
    lab = index + 1
    ys, xs = np.nonzero(seg.cell_labels == lab)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    nuc = seg.nucleus_labels[y0:y1, x0:x1] == lab
    if not nuc.any():
        return (x0, y0, x1, y1), (x0, y0, x1, y1), 0
    ny, nx = np.nonzero(nuc)
    nbox = (x0 + int(nx.min()), y0 + int(ny.min()), x0 + int(nx.max()) + 1, y0 + int(ny.max()) + 1)
    return (x0, y0, x1, y1), nbox, int(nuc.sum())


def _measure(seg: Segmentation, index: int) -> FoundCell:
    lab = index + 1
    cell_box, nucleus_box, nucleus_area = raw_boxes(seg, index)
    x0, y0, x1, y1 = cell_box
    nuc = seg.nucleus_labels[y0:y1, x0:x1] == lab
    cell_crop = seg.cell_labels[y0:y1, x0:x1] == lab
    box = cell_box
    if seg.kinds[index] == WBC:
        box = whole_cell_box(cell_box, nucleus_box, nucleus_area, seg.cell_labels.shape)
    return FoundCell(
        kind=seg.kinds[index],
        box=box,
        score=seg.scores[index],
        nucleus_polygon=mask_polygon(nuc, (x0, y0)),
        cell_polygon=mask_polygon(cell_crop, (x0, y0)),
        nucleus_area_px=int(nuc.sum()),
        cell_area_px=int(cell_crop.sum()),
    )


def find_cells(rgb: np.ndarray) -> list[FoundCell]:
    """Every white cell and platelet of an HxWx3 uint8 RGB image, best score first; [] when there is none."""
    return find_cells_in(segment(rgb))


def find_cells_in(seg: Segmentation) -> list[FoundCell]:
    """The cells of a segmentation made by :func:`segment` (as :func:`find_cells`), specks dropped."""
    present = np.bincount(seg.cell_labels.ravel(), minlength=len(seg.kinds) + 1)[1:] > 0
    found = [_measure(seg, i) for i in range(len(seg.kinds)) if present[i]]
    r = seg.maps.rbc_radius if seg.maps is not None else 0.0
    found = [c for c in found if c.kind != WBC or counted(c, r)]
    return sorted(found, key=lambda c: (-c.score, c.box))


def counted(cell: FoundCell, rbc_radius: float) -> bool:
    """Whether a white-cell candidate is one a haematologist would count (not a speck or a faint fragment)."""
    side = max(cell.box[2] - cell.box[0], cell.box[3] - cell.box[1])
    return cell.score >= WBC_MIN_SCORE and side >= WBC_MIN_SIDE * rbc_radius


def segment_masks(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell labels, white-cell nucleus mask, white-cell whole-cell mask): the pixel view used for evaluation."""
    seg = segment(rgb)
    wbc = np.array([False] + [k == WBC for k in seg.kinds], dtype=bool)
    return seg.cell_labels, wbc[seg.nucleus_labels], wbc[seg.cell_labels]
