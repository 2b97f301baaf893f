"""The cell model measured through the served path: the whole uploaded image through finder and typer.

    python -m evaluation.cell_served [--model artifacts/wbc_cells/model] [--out artifacts/wbc_cells/served_metrics.json]

Every number here comes from :class:`handlers.cell_runtime.CellPipeline`, the code TorchServe runs
(the image at its true shape, :func:`cells.segment.find_cells`, crops, the typer, calibration and
abstention), never from crops cut by hand. The typer-on-crops figures of
:mod:`training.cell_typer_eval` are reported beside them in the card, labelled so.

- **B-ALL frames** (all4 validation blocks, :func:`training.data.load_split`, the frame models'
  split; never trained on): per frame the white cells found (``kind`` wbc), how many are typed blast,
  the blast share of the white cells (typed blast / all white cells, unclassified included, as a
  differential counts them) and the mean calibrated blast probability; the AUC of each for malignant
  (Early/Pre/Pro) against Benign frames. The frame label is the only truth: the cells' own labels
  are not known.
- **PBC validation images uploaded whole** (each a 360x363 crop around one cell): the found cell
  nearest the image centre is the cell; its label (argmax; abstention reported apart) against the
  folder's type. No cell found counts as wrong. Also: the share of white cells called blast.
- **PBC validation images at B-ALL-frame resolution** (the image shrunk so the cell is as large as
  in a widened all4 frame, :data:`PBC_SMALL_SIDE`): typed as crops, the share called blast; a typer
  that learned "small and blurry" = blast fails here.
- **BCCD validation frames**: the white cells found against the annotated boxes (IoU >= 0.5); the
  4-type accuracy of each annotated white cell (a missed cell counts as wrong) over the frames with
  one type and one white cell.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from core.registry import LEUKOCYTE_CLASSES
from handlers.cell_runtime import CellPipeline
from training.cell_data import bccd_split, pbc_split
from training.cell_eval import box_iou
from training.data import load_split

__all__ = [
    "PBC_SMALL_SIDE",
    "is_white",
    "open_rgb",
    "frame_blast",
    "evaluate_all4",
    "evaluate_pbc",
    "evaluate_bccd",
    "main",
]

BLAST = "blast"
#: PBC image side (px) at which its cell is as large as a white cell in a widened all4 frame (20-33 px)
PBC_SMALL_SIDE = 60


def open_rgb(path: Path) -> Image.Image:
    """The image file as RGB, read whole (the file closed)."""
    with Image.open(path) as im:
        return im.convert("RGB")


def is_white(cell: dict[str, Any]) -> bool:
    """Counted as a white cell by the differential: typed a white-cell type, or unclassified."""
    return cell["label"] is None or cell["label"] in LEUKOCYTE_CLASSES


def frame_blast(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The white cells of one answer as the differential counts them (labelled a white-cell type or
    unclassified, whatever the finder's ``kind``) and their blast numbers (share typed blast, mean blast
    probability)."""
    white = [c for c in cells if is_white(c)]
    blasts = sum(1 for c in white if c["label"] == BLAST)
    return {
        "white": len(white),
        "white_platelet_kind": sum(1 for c in white if c["kind"] != "wbc"),
        "blast": blasts,
        "share": blasts / len(white) if white else 0.0,
        "mean_p": float(np.mean([c["probabilities"].get(BLAST, 0.0) for c in white])) if white else 0.0,
        "labels": Counter(str(c["label"]) for c in white),
    }


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    return round(float(roc_auc_score(y, score)), 4) if 0 < y.sum() < len(y) else None


def evaluate_all4(pipeline: CellPipeline, every: int = 1, log: Any = print) -> dict[str, Any]:
    """Blast share per all4 validation frame, its AUC malignant vs Benign, and the type mix per frame class."""
    val = load_split().val
    rows, timing, frames = [], [], []
    for i, s in enumerate(val[::every]):
        t: dict[str, float] = {}
        cells = pipeline.cells(open_rgb(s.path), t)
        timing.append(t["segment"] + t["type"])
        counts = frame_blast(cells)
        rows.append((s.class_name, counts))
        frames.append(
            {"index": i * every, "frame": s.relpath, "block": s.block, "class": s.class_name}
            | {k: counts[k] for k in ("white", "blast")}
        )
        if (i + 1) % 50 == 0:
            log(f"  all4 val {i + 1}/{len(val[::every])}")
    y = np.array([c != "Benign" for c, _ in rows], dtype=int)
    share = np.array([r["share"] for _, r in rows])
    mean_p = np.array([r["mean_p"] for _, r in rows])
    per_class: dict[str, Any] = {}
    for name in sorted({c for c, _ in rows}):
        rs = [r for c, r in rows if c == name]
        mix: Counter[str] = Counter()
        for r in rs:
            mix.update(r["labels"])
        per_class[name] = {
            "frames": len(rs),
            "white_cells_per_frame": round(float(np.mean([r["white"] for r in rs])), 2),
            "of_them_platelet_sized": round(float(np.mean([r["white_platelet_kind"] for r in rs])), 2),
            "blast_share_mean": round(float(np.mean([r["share"] for r in rs])), 4),
            "blast_share_median": round(float(np.median([r["share"] for r in rs])), 4),
            "frames_without_white_cells": sum(1 for r in rs if r["white"] == 0),
            "white_cell_labels": dict(mix.most_common()),
        }
    return {
        "frames": len(rows),
        "auc_blast_share": _auc(y, share),
        "auc_mean_blast_probability": _auc(y, mean_p),
        "per_class": per_class,
        "pipeline_ms_p50": round(float(np.percentile(timing, 50)), 1),
        "per_frame": frames,
    }


def _nearest_centre(cells: Sequence[dict[str, Any]], width: int, height: int) -> dict[str, Any] | None:
    if not cells:
        return None

    def dist(c: dict[str, Any]) -> float:
        x0, y0, x1, y1 = c["box"]
        return ((x0 + x1) / 2 - width / 2) ** 2 + ((y0 + y1) / 2 - height / 2) ** 2

    return min(cells, key=dist)


def evaluate_pbc(pipeline: CellPipeline, every: int = 1, log: Any = print) -> dict[str, Any]:
    """PBC validation images uploaded whole (served path) and shrunk to all4 resolution (crops)."""
    _, val = pbc_split()
    val = val[::every]
    classes = pipeline.classes
    served_pred: list[str | None] = []
    served_abstained: list[bool] = []
    small_pred: list[str] = []
    truth = [s.class_name for s in val]
    for i, s in enumerate(val):
        image = open_rgb(s.path)
        cell = _nearest_centre(pipeline.cells(image), image.width, image.height)
        served_pred.append(None if cell is None else max(cell["probabilities"], key=cell["probabilities"].get))
        served_abstained.append(cell is None or bool(cell["abstained"]))
        small = image.resize((PBC_SMALL_SIDE, PBC_SMALL_SIDE), Image.Resampling.BOX)
        probs = pipeline.type_crops([pipeline.transform(small)])[0]
        small_pred.append(classes[int(torch.argmax(probs))])
        if (i + 1) % 100 == 0:
            log(f"  pbc val {i + 1}/{len(val)}")
    truth_a, served_a, small_a = np.array(truth), np.array([str(p) for p in served_pred]), np.array(small_pred)
    per_class = {
        name: {
            "n": int((truth_a == name).sum()),
            "served_recall": round(float((served_a[truth_a == name] == name).mean()), 4),
            "served_called_blast": round(float((served_a[truth_a == name] == BLAST).mean()), 4),
            "small_called_blast": round(float((small_a[truth_a == name] == BLAST).mean()), 4),
        }
        for name in sorted(set(truth))
    }
    white = np.isin(truth_a, LEUKOCYTE_CLASSES)
    return {
        "images": len(val),
        "served_accuracy": round(float((served_a == truth_a).mean()), 4),
        "served_no_cell_found": sum(1 for p in served_pred if p is None),
        "served_abstained": round(float(np.mean(served_abstained)), 4),
        "served_called_blast": round(float((served_a == BLAST).mean()), 4),
        "served_white_called_blast": round(float((served_a[white] == BLAST).mean()), 4),
        "small_side_px": PBC_SMALL_SIDE,
        "small_accuracy": round(float((small_a == truth_a).mean()), 4),
        "small_called_blast": round(float((small_a == BLAST).mean()), 4),
        "small_white_called_blast": round(float((small_a[white] == BLAST).mean()), 4),
        "per_class": per_class,
    }


def evaluate_bccd(pipeline: CellPipeline, log: Any = print) -> dict[str, Any]:
    """BCCD validation frames: each annotated white cell's served type (missed = wrong); blast calls."""
    _, val = bccd_split()
    correct, total, blast_calls, white_found = 0, 0, 0, 0
    for f in val:
        cells = pipeline.cells(open_rgb(f.image))
        white = [c for c in cells if c["kind"] == "wbc"]
        white_found += len(white)
        blast_calls += sum(1 for c in white if c["label"] == BLAST)
        if f.single_type is None:
            continue
        gt = f.wbc_boxes[0].as_list()
        total += 1
        matches = [(box_iou(c["box"], gt), c) for c in white]
        best = max(matches, key=lambda m: m[0], default=(0.0, None))
        if best[1] is not None and best[0] >= 0.5:
            probs = best[1]["probabilities"]
            correct += int(max(probs, key=probs.get) == f.single_type)
    return {
        "frames": len(val),
        "typed_frames": total,
        "served_type_accuracy": round(correct / max(total, 1), 4),
        "white_cells_found": white_found,
        "white_cells_called_blast": blast_calls,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="artifacts/wbc_cells/model")
    p.add_argument("--out", default="artifacts/wbc_cells/served_metrics.json")
    p.add_argument(
        "--frames-out",
        default="artifacts/wbc_cells/served_frames.json",
        help="per-frame white cells and blasts of the all4 validation frames (evaluation.specimen_checks reads it)",
    )
    p.add_argument("--every", type=int, default=1, help="every N-th validation frame/image (1: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=["all4", "pbc", "bccd"], nargs="*", default=["all4", "pbc", "bccd"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipeline = CellPipeline.from_typer_dir(args.model)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"{msg} ({time.time() - t0:.0f}s)", flush=True)

    out = Path(args.out)
    result: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    result["definitions"] = {
        "path": "handlers.cell_runtime.CellPipeline on the whole image (true shape, finder, typer, calibration)",
        "every": args.every,
    }
    if "all4" in args.only:
        result["all4_val"] = evaluate_all4(pipeline, args.every, log)
        frames_out = Path(args.frames_out)
        frames_out.parent.mkdir(parents=True, exist_ok=True)
        frames_out.write_text(json.dumps(result["all4_val"].pop("per_frame"), indent=1) + "\n")
        log(json.dumps(result["all4_val"]))
    if "pbc" in args.only:
        result["pbc_val"] = evaluate_pbc(pipeline, args.every, log)
        log(json.dumps(result["pbc_val"]))
    if "bccd" in args.only:
        result["bccd_val"] = evaluate_bccd(pipeline, log)
        log(json.dumps(result["bccd_val"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
