"""Measure the cell finder (:mod:`cells`) on real data and write ``finder_metrics.json``.

``python -m training.cell_eval --out artifacts/wbc_cells/finder_metrics.json [--skip-train] [--all4 N]``
``python -m training.cell_eval --fit`` refits the box/score calibration (:mod:`cells.refine`) on the BCCD training
frames and writes ``cells/fitted.py`` (plain constants: it ships inside the model archive with the code).

- WBC (and platelet) detection on BCCD frames: VOC all-point interpolated AP at IoU 0.5; ground truth = the
  XML's "WBC" ("Platelets") boxes, detections = ``find_cells`` entries of that kind ranked by score, each ground
  truth matched at most once (highest-IoU unmatched box); recall/precision at the operating point (= everything
  ``find_cells`` returns) and the mean IoU of matched pairs.
- Nucleus / whole-cell segmentation against ``bccd/masks`` (2 = nucleus, 1 = cytoplasm; cell = 1|2). The masks
  outline only the labelled white cell, so pixels are compared inside its region only: the bounding box of the
  ground-truth cell grown by ``REGION_MARGIN`` of its size on every side. Dice/IoU per frame (mean) and pooled.
- Agreement with the B-ALL ``segmented/`` twins (authors' colour threshold, background black). Measured: the twins
  keep mostly the purple (white) cells, 6-26% of the frame, and some series are entirely black (skipped, counted).
  Reported: fraction of our white-cell nucleus pixels inside that foreground, fraction of our whole-cell pixels
  inside it, and the Dice of our whole-cell mask vs that foreground (a different threshold, so not ground truth).
- Timing: p50/p95 wall time of ``find_cells`` per BCCD 640x480 frame on this CPU, one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cells import find_cells, segment_masks
from cells.refine import logit, whole_cell_box
from cells.segment import PLATELET, WBC, raw_boxes, segment
from core.paths import ALL4_ORIGINAL
from training.cell_data import BccdFrame, bccd_split

IOU_MATCH = 0.5
REGION_MARGIN = 0.25
ALL4_SAMPLE = 200
#: Pixel value above which a ``segmented/`` twin pixel counts as foreground (JPEG noise keeps black at 0-15).
SEGMENTED_FOREGROUND = 25
#: A twin with less foreground than this share is empty (some series were thresholded to black) and is skipped.
EMPTY_TWIN_SHARE = 0.005
TIMING_FRAMES = 40


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP (PASCAL VOC 2010+): area under the precision envelope."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


FrameDetections = tuple[Sequence[Sequence[float]], Sequence[tuple[float, Sequence[float]]]]


def detection_metrics(per_frame: Sequence[FrameDetections]) -> dict:
    """AP@0.5 etc. from [(ground-truth boxes, [(score, box), ...]) per frame]."""
    scored = []  # (score, frame index, box)
    n_gt = 0
    for i, (gts, dets) in enumerate(per_frame):
        n_gt += len(gts)
        scored += [(s, i, b) for s, b in dets]
    scored.sort(key=lambda t: -t[0])
    used = [np.zeros(len(g), dtype=bool) for g, _ in per_frame]
    tp = np.zeros(len(scored))
    ious = []
    for k, (_, i, box) in enumerate(scored):
        gts = per_frame[i][0]
        overlaps = [box_iou(box, g) if not used[i][j] else -1.0 for j, g in enumerate(gts)]
        if overlaps and max(overlaps) >= IOU_MATCH:
            j = int(np.argmax(overlaps))
            used[i][j] = True
            tp[k] = 1
            ious.append(overlaps[j])
    ctp = np.cumsum(tp)
    recall = ctp / max(n_gt, 1)
    precision = ctp / np.arange(1, len(scored) + 1)
    return {
        "ground_truth": n_gt,
        "detections": len(scored),
        "ap50": round(voc_ap(recall, precision), 4) if scored else 0.0,
        "recall": round(float(ctp[-1] / max(n_gt, 1)), 4) if scored else 0.0,
        "precision": round(float(ctp[-1] / len(scored)), 4) if scored else 0.0,
        "mean_iou_matched": round(float(np.mean(ious)), 4) if ious else 0.0,
    }


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def evaluate_detection(frames: list[BccdFrame], label: str) -> dict:
    wbc: list[FrameDetections] = []
    plt: list[FrameDetections] = []
    for k, f in enumerate(frames):
        cells = find_cells(_rgb(f.image))
        wbc.append(([b.as_list() for b in f.wbc_boxes], [(c.score, list(c.box)) for c in cells if c.kind == WBC]))
        plt.append(
            (
                [b.as_list() for b in f.boxes if b.kind == "Platelets"],
                [(c.score, list(c.box)) for c in cells if c.kind == PLATELET],
            )
        )
        if (k + 1) % 20 == 0:
            print(f"  detection {label}: {k + 1}/{len(frames)}", flush=True)
    return {"frames": len(frames), "wbc": detection_metrics(wbc), "platelet": detection_metrics(plt)}


def _dice_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, int, int, int]:
    inter, p, g = int((pred & gt).sum()), int(pred.sum()), int(gt.sum())
    dice = 2 * inter / (p + g) if p + g else 1.0
    iou = inter / (p + g - inter) if p + g - inter else 1.0
    return dice, iou, inter, p, g


def evaluate_segmentation(frames: list[BccdFrame]) -> dict:
    stats: dict[str, dict[str, list]] = {
        "nucleus": {"dice": [], "iou": [], "sums": []},
        "cell": {"dice": [], "iou": [], "sums": []},
    }
    n = 0
    for f in frames:
        if f.mask is None:
            continue
        gt = np.asarray(Image.open(f.mask))
        if not (gt > 0).any():
            continue
        ys, xs = np.nonzero(gt > 0)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        y0, y1 = max(0, int(ys.min() - REGION_MARGIN * h)), int(ys.max() + 1 + REGION_MARGIN * h)
        x0, x1 = max(0, int(xs.min() - REGION_MARGIN * w)), int(xs.max() + 1 + REGION_MARGIN * w)
        _, nucleus, cell = segment_masks(_rgb(f.image))
        region = (slice(y0, y1), slice(x0, x1))
        for name, pred, truth in (("nucleus", nucleus, gt == 2), ("cell", cell, gt > 0)):
            d, i, inter, p, g = _dice_iou(pred[region], truth[region])
            stats[name]["dice"].append(d)
            stats[name]["iou"].append(i)
            stats[name]["sums"].append((inter, p, g))
        n += 1
    out: dict = {"frames": n}
    for name, s in stats.items():
        inter, p, g = (int(v) for v in np.sum(s["sums"], axis=0)) if s["sums"] else (0, 0, 0)
        out[name] = {
            "dice_mean": round(float(np.mean(s["dice"])), 4) if s["dice"] else 0.0,
            "dice_median": round(float(np.median(s["dice"])), 4) if s["dice"] else 0.0,
            "iou_mean": round(float(np.mean(s["iou"])), 4) if s["iou"] else 0.0,
            "dice_pooled": round(2 * inter / (p + g), 4) if p + g else 0.0,
            "iou_pooled": round(inter / (p + g - inter), 4) if p + g - inter else 0.0,
        }
    return out


def all4_sample(n: int = ALL4_SAMPLE) -> list[Path]:
    """``n`` originals spread evenly over classes and file numbers (deterministic)."""
    classes = sorted(p for p in ALL4_ORIGINAL.iterdir() if p.is_dir())
    out: list[Path] = []
    for c in classes:
        files = sorted(c.glob("*.jpg"))
        k = n // len(classes)
        out += [files[int(i)] for i in np.linspace(0, len(files) - 1, k)]
    return out


def evaluate_all4(paths: list[Path]) -> dict:
    inside_nuc, inside_cell, dice, per_frame_cells = [], [], [], []
    empty = empty_twins = 0
    for k, p in enumerate(paths):
        twin = p.parent.parent.parent / "segmented" / p.parent.name / p.name
        if not twin.is_file():
            continue
        rgb = _rgb(p)
        fg = _rgb(twin).max(axis=-1) > SEGMENTED_FOREGROUND
        if fg.mean() < EMPTY_TWIN_SHARE:  # the authors' threshold kept nothing (some series): no reference
            empty_twins += 1
            continue
        labels, nucleus, cell = segment_masks(rgb)
        per_frame_cells.append(len(find_cells(rgb)))
        if not nucleus.any():
            empty += 1
            continue
        inside_nuc.append(float((nucleus & fg).sum() / nucleus.sum()))
        inside_cell.append(float((cell & fg).sum() / cell.sum()))
        dice.append(_dice_iou(cell, fg)[0])
        if (k + 1) % 50 == 0:
            print(f"  all4: {k + 1}/{len(paths)}", flush=True)
    return {
        "frames": len(per_frame_cells),
        "frames_with_empty_twin_skipped": empty_twins,
        "frames_without_white_cell": empty,
        "white_cells_per_frame_mean": round(float(np.mean(per_frame_cells)), 2) if per_frame_cells else 0.0,
        "nucleus_inside_segmented_mean": round(float(np.mean(inside_nuc)), 4) if inside_nuc else 0.0,
        "cell_inside_segmented_mean": round(float(np.mean(inside_cell)), 4) if inside_cell else 0.0,
        "cell_dice_vs_segmented_mean": round(float(np.mean(dice)), 4) if dice else 0.0,
    }


def evaluate_timing(frames: list[BccdFrame]) -> dict:
    times = []
    for f in frames[:TIMING_FRAMES]:
        rgb = _rgb(f.image)
        t0 = time.perf_counter()
        find_cells(rgb)
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "frames": len(times),
        "image_size": "640x480",
        "p50_ms": round(float(np.percentile(times, 50)), 1),
        "p95_ms": round(float(np.percentile(times, 95)), 1),
        "cpu": platform.processor() or platform.machine(),
        "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
    }


#: Box margins tried by the fit (nucleus sizes beyond the nucleus box) and the logistic model's L2 strength.
MARGIN_GRID = tuple(round(0.025 * i, 3) for i in range(17))
SCORE_L2 = 1.0
FITTED_MODULE = Path(__file__).resolve().parent.parent / "cells" / "fitted.py"
FITTED_HEADER = '''"""Generated by `python -m training.cell_eval --fit` from the BCCD training frames; do not edit.

Fitted on {frames} frames, {detections} white-cell detections ({positives} matching an annotated box at IoU 0.5).
See cells.refine for how the constants are used.
"""
'''


def _calibration_rows(frames: list[BccdFrame]) -> list[dict]:
    """Raw (uncalibrated) white-cell detections of ``frames`` with their frame's ground truth."""
    rows = []
    for k, f in enumerate(frames):
        rgb = _rgb(f.image)
        seg = segment(rgb)
        gts = [b.as_list() for b in f.wbc_boxes]
        for i, kind in enumerate(seg.kinds):
            if kind != WBC or not (seg.cell_labels == i + 1).any():
                continue
            cell_box, nucleus_box, nucleus_area = raw_boxes(seg, i)
            raw, edge = seg.features[i]
            rows.append(
                {
                    "gts": gts,
                    "shape": rgb.shape[:2],
                    "cell": cell_box,
                    "nucleus": nucleus_box,
                    "area": nucleus_area,
                    "raw": raw,
                    "edge": edge,
                }
            )
        if (k + 1) % 40 == 0:
            print(f"  fit: {k + 1}/{len(frames)} frames", flush=True)
    return rows


def _best_iou(row: dict, margin: float) -> float:
    box = whole_cell_box(row["cell"], row["nucleus"], row["area"], row["shape"], margin)
    return max((box_iou(box, g) for g in row["gts"]), default=0.0)


def fit_margin(rows: list[dict]) -> float:
    """The grid margin matching most training boxes at IoU 0.5, ties broken by their mean IoU, then the smaller."""

    def quality(m: float) -> tuple[int, float, float]:
        ious = np.array([_best_iou(r, m) for r in rows])
        hit = ious >= IOU_MATCH
        return int(hit.sum()), round(float(ious[hit].mean()) if hit.any() else 0.0, 4), -m

    return max(MARGIN_GRID, key=quality)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = SCORE_L2) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (Newton steps on standardised features) -> raw-feature weights, bias."""
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = np.column_stack([(x - mu) / sd, np.ones(len(x))])
    w = np.zeros(z.shape[1])
    penalty = np.diag(np.r_[np.full(len(w) - 1, l2), 0.0])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-z @ w))
        step = np.linalg.solve(z.T @ (z * (p * (1 - p))[:, None]) + penalty, z.T @ (p - y) + penalty @ w)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w[:-1] / sd, float(w[-1] - np.sum(w[:-1] * mu / sd))


def fit_calibration(frames: list[BccdFrame], out: Path = FITTED_MODULE) -> dict:
    """Fit the box margin and the white-cell score on ``frames`` (the training split) and write ``out``."""
    rows = _calibration_rows(frames)
    margin = fit_margin(rows)
    x = np.array([[logit(r["raw"]), r["edge"]] for r in rows])
    y = np.array([_best_iou(r, margin) >= IOU_MATCH for r in rows], dtype=float)
    weights, bias = fit_logistic(x, y)
    w = [round(float(v), 4) for v in weights]
    fit: dict = {
        "frames": len(frames),
        "detections": len(rows),
        "positives": int(y.sum()),
        "box_margin": margin,
        "score_weights": w,
        "score_bias": round(bias, 4),
    }
    out.write_text(
        FITTED_HEADER.format(**fit)
        + f"\nBOX_MARGIN = {margin!r}\n"
        + f"SCORE_WEIGHTS = ({w[0]!r}, {w[1]!r})\n"
        + f"SCORE_BIAS = {fit['score_bias']!r}\n"
    )
    return fit


DEFINITIONS = {
    "ap50": "VOC all-point interpolated AP, IoU >= 0.5, ground truth = XML boxes of the kind, detections ranked by "
    "score, each ground truth matched once (highest-IoU unmatched)",
    "operating_point": "every detection find_cells returns (no score cut-off)",
    "segmentation_region": f"bounding box of the ground-truth cell (mask > 0) grown by {REGION_MARGIN} of its "
    "height/width on each side; nucleus = mask 2, cell = mask 1|2; predicted = union of white-cell masks",
    "all4": f"{ALL4_SAMPLE} originals spread over classes; segmented foreground = twin max channel > "
    f"{SEGMENTED_FOREGROUND}; twins with < {EMPTY_TWIN_SHARE} foreground skipped; the twin is the dataset "
    "authors' colour threshold (mostly the purple cells), a reference, not ground truth",
    "timing": "wall time of cells.find_cells on one decoded 640x480 BCCD frame, single thread",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("artifacts/wbc_cells/finder_metrics.json"))
    ap.add_argument("--all4", type=int, default=ALL4_SAMPLE, help="number of B-ALL frames to compare (0 = skip)")
    ap.add_argument("--skip-train", action="store_true", help="measure on validation frames only")
    ap.add_argument("--fit", action="store_true", help="refit the box/score calibration on the training frames")
    args = ap.parse_args(argv)
    train, val = bccd_split()
    if args.fit:
        print(f"fitting on BCCD train: {len(train)} frames", flush=True)
        print(json.dumps(fit_calibration(train)), flush=True)
        print(f"wrote {FITTED_MODULE}")
        return 0
    result: dict = {"definitions": DEFINITIONS, "bccd_val": {}, "bccd_train": {}}
    print(f"BCCD val: {len(val)} frames", flush=True)
    result["bccd_val"]["detection"] = evaluate_detection(val, "val")
    result["bccd_val"]["segmentation"] = evaluate_segmentation(val)
    print(json.dumps(result["bccd_val"], indent=1), flush=True)
    if not args.skip_train:
        print(f"BCCD train: {len(train)} frames", flush=True)
        result["bccd_train"]["detection"] = evaluate_detection(train, "train")
        result["bccd_train"]["segmentation"] = evaluate_segmentation(train)
        print(json.dumps(result["bccd_train"], indent=1), flush=True)
    if args.all4:
        result["all4_segmented_agreement"] = evaluate_all4(all4_sample(args.all4))
        print(json.dumps(result["all4_segmented_agreement"], indent=1), flush=True)
    result["timing"] = evaluate_timing(val)
    print(json.dumps(result["timing"], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
