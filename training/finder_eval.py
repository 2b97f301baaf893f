"""Does the cell finder count what a haematologist counts? Per-frame counts on the B-ALL frames, plus BCCD.

``python -m training.finder_eval --out artifacts/wbc_cells/finder_counts.json [--per-class N]``

On B-ALL frames (``all4/original``), each widened to its true 4:3 shape as the served path does
(:func:`core.aspect.true_shape`), every white cell :func:`cells.find_cells` returns is checked against the
frame's ``segmented`` twin (the data set authors' colour threshold: it keeps the purple cells, black elsewhere;
a reference where it marks cells, not ground truth; twins that kept nothing are skipped and counted):

- ``detections``: white cells found;
- ``tiny``: white cells whose box's long side is under ``TINY_SIDE`` red-cell diameters (a small lymphocyte is
  about one red cell across, a blast more: smaller is a speck or a fragment), diameter = 2 x ``ALL4_RBC_RADIUS``
  (the frames share one camera; the finder's own per-frame estimate is listed as ``finder_rbc_radius``);
- ``outside``: white cells whose box holds under ``OUTSIDE_SHARE`` twin foreground (the twin shows no purple
  cell there: a red-cell clump, stain or debris);
- reference cells: twin components (opened by 1 px, holes filled) with an area of at least ``REF_MIN_AREA``
  red-cell areas, at least ``REF_SOLID`` of it foreground before filling (some twins kept red-cell rims: rings),
  whose outline lies on the frame edge for at most ``REF_EDGE_SHARE`` of a disc's perimeter;
  touching cells the twin itself joins stay one reference cell (so merges are, if anything, undercounted);
- ``missed``: reference cells whose centre lies in no white-cell box; ``missed_dark``: those among them darker
  than the frame's median reference cell (mean grey level; the dark blasts);
- ``merged``: white-cell boxes that hold the centres of two or more reference cells, each at least
  ``MERGE_INSIDE`` inside the box (one box over two cells).

BCCD (``bccd_split`` validation frames): WBC AP@0.5 and nucleus Dice through the finder, measured as
:mod:`training.cell_eval` does (the card's figures). ``--bccd-train`` adds the training frames.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from cells.segment import WBC, find_cells_in, segment
from core.aspect import true_shape
from core.paths import ALL4_ORIGINAL
from training.cell_data import bccd_split
from training.cell_eval import EMPTY_TWIN_SHARE, SEGMENTED_FOREGROUND, evaluate_detection, evaluate_segmentation

CLASSES = ("Benign", "Early", "Pre", "Pro")
PER_CLASS = 40
TINY_SIDE = 0.9
OUTSIDE_SHARE = 0.1
REF_MIN_AREA = 0.6
REF_EDGE_SHARE = 0.25
MERGE_INSIDE = 0.6
REF_SOLID = 0.6
#: Red-cell radius of the widened (299x224) B-ALL frames, one camera: the median of the finder's own per-frame
#: estimate over the 160 frames measured here (11.2 px; quartiles 9.0-12.0), fixed so the reference does not move
#: with the finder.
ALL4_RBC_RADIUS = 11.2


def frame_sample(per_class: int = PER_CLASS) -> list[Path]:
    """``per_class`` originals per class, spread evenly over file numbers (deterministic)."""
    out: list[Path] = []
    for c in CLASSES:
        files = sorted((ALL4_ORIGINAL / c).glob("*.jpg"))
        out += [files[int(i)] for i in np.linspace(0, len(files) - 1, per_class)]
    return out


def twin_of(path: Path) -> Path:
    return path.parent.parent.parent / "segmented" / path.parent.name / path.name


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        shaped, _ = true_shape(im.convert("RGB"))
        return np.asarray(shaped)


def reference_cells(twin: np.ndarray, rbc_radius: float) -> list[np.ndarray]:
    """Boolean masks of the twin's cell-sized components (see the module doc)."""
    raw = twin.max(axis=-1) > SEGMENTED_FOREGROUND
    fg = ndi.binary_fill_holes(ndi.binary_opening(raw, iterations=1))
    labels, n = ndi.label(fg)
    unit = np.pi * rbc_radius**2
    out = []
    h, w = fg.shape
    for i, sl in enumerate(ndi.find_objects(labels)):
        if sl is None:
            continue
        m = labels == i + 1
        area = int(m.sum())
        if area < REF_MIN_AREA * unit or raw[m].mean() < REF_SOLID:
            continue
        edge = int(m[0].sum() + m[-1].sum() + m[:, 0].sum() + m[:, -1].sum())
        if edge > REF_EDGE_SHARE * 2 * np.sqrt(np.pi * area):
            continue
        out.append(m)
    return out


def _inside(mask: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    return float(mask[y0:y1, x0:x1].sum() / max(mask.sum(), 1))


def frame_counts(path: Path) -> dict | None:
    """Counts of one B-ALL frame, or None when its twin kept nothing."""
    rgb = _load(path)
    twin = _load(twin_of(path))
    fg = twin.max(axis=-1) > SEGMENTED_FOREGROUND
    if fg.mean() < EMPTY_TWIN_SHARE:
        return None
    seg = segment(rgb)
    r = ALL4_RBC_RADIUS
    wbcs = [c for c in find_cells_in(seg) if c.kind == WBC]
    refs = reference_cells(twin, r)
    grey = rgb.mean(axis=-1)
    ref_grey = [float(grey[m].mean()) for m in refs]
    dark_line = float(np.median(ref_grey)) if ref_grey else 0.0
    centres = [tuple(int(v) for v in ndi.center_of_mass(m)) for m in refs]  # (y, x)

    def holds(box: tuple[int, int, int, int], k: int) -> bool:
        y, x = centres[k]
        return box[0] <= x < box[2] and box[1] <= y < box[3]

    missed = [k for k in range(len(refs)) if not any(holds(c.box, k) for c in wbcs)]
    merged = 0
    for c in wbcs:
        inside = [k for k in range(len(refs)) if holds(c.box, k) and _inside(refs[k], c.box) >= MERGE_INSIDE]
        merged += len(inside) >= 2
    tiny = [c for c in wbcs if max(c.box[2] - c.box[0], c.box[3] - c.box[1]) < TINY_SIDE * 2 * r]
    outside = [c for c in wbcs if _inside(fg, c.box) * fg.sum() < OUTSIDE_SHARE * _area(c.box)]
    return {
        "frame": f"{path.parent.name}/{path.name}",
        "finder_rbc_radius": round(float(seg.maps.rbc_radius), 2) if seg.maps is not None else None,
        "detections": len(wbcs),
        "tiny": len(tiny),
        "outside": len(outside),
        "reference": len(refs),
        "missed": len(missed),
        "missed_dark": sum(ref_grey[k] <= dark_line for k in missed),
        "merged": merged,
    }


def _area(box: tuple[int, int, int, int]) -> int:
    return max(1, (box[2] - box[0]) * (box[3] - box[1]))


KEYS = ("detections", "tiny", "outside", "reference", "missed", "missed_dark", "merged")


def summarise(rows: list[dict]) -> dict:
    out: dict = {"frames": len(rows)}
    for k in KEYS:
        v = np.array([r[k] for r in rows], dtype=float)
        out[k] = {"total": int(v.sum()), "per_frame": round(float(v.mean()), 3) if len(v) else 0.0}
    for k in ("tiny", "outside", "missed", "merged"):
        out[f"frames_with_{k}"] = sum(r[k] > 0 for r in rows)
    return out


def evaluate_all4(paths: list[Path]) -> dict:
    rows, skipped = [], 0
    for i, p in enumerate(paths):
        row = frame_counts(p)
        if row is None:
            skipped += 1
            continue
        rows.append(row)
        if (i + 1) % 40 == 0:
            print(f"  all4: {i + 1}/{len(paths)}", flush=True)
    by_class = {c: summarise([r for r in rows if r["frame"].startswith(c + "/")]) for c in CLASSES}
    return {"empty_twin_skipped": skipped, "all": summarise(rows), "by_class": by_class, "frames": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("artifacts/wbc_cells/finder_counts.json"))
    ap.add_argument("--per-class", type=int, default=PER_CLASS, help="B-ALL frames per class (0 = skip)")
    ap.add_argument("--no-bccd", action="store_true", help="skip the BCCD validation measures")
    ap.add_argument("--bccd-train", action="store_true", help="also measure the BCCD training frames")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    result: dict = {"definitions": __doc__}
    if args.per_class:
        result["all4"] = evaluate_all4(frame_sample(args.per_class))
        print(json.dumps({"all": result["all4"]["all"], "skipped": result["all4"]["empty_twin_skipped"]}), flush=True)
    if not args.no_bccd:
        train, val = bccd_split()
        for name, frames in (("bccd_val", val), ("bccd_train", train if args.bccd_train else [])):
            if frames:
                det = evaluate_detection(frames, name)
                seg = evaluate_segmentation(frames)
                result[name] = {"frames": len(frames), "wbc": det["wbc"], "nucleus": seg["nucleus"]}
                print(name, json.dumps(result[name]), flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
