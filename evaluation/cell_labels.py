"""The served cell pipeline against hand-labelled cells of B-ALL validation frames (issue #29).

    python -m evaluation.cell_labels [--model artifacts/wbc_cells/model] [--out artifacts/wbc_cells/cell_labels.json]
    python -m evaluation.cell_labels --montage /tmp/labels     # the numbered crops the labels were given on

:data:`LABELS` (``evaluation/cell_labels_all4.json``) holds 323 cells found by the served pipeline on 34
all4 validation frames (:func:`sample_frames`: balanced over Benign/Early/Pre/Pro), each labelled by eye
from a blind montage (its header says who, how and when). The frame class, not the look, separates
``blast_like`` (lymphoid look, malignant frame) from ``lymphoid`` (same look, Benign frame): at 15-45 px a
blast cannot be told from a lymphocyte by eye, so blast numbers here are still frame-borne, but on cells
checked to be single lymphoid white cells, not specks, red cells or clusters.

:func:`evaluate` runs :class:`handlers.cell_runtime.CellPipeline` on the labelled frames, matches its
boxes one-to-one to the labelled boxes (IoU >= :data:`IOU`, greedy by IoU) and reports, with Wilson 95%
intervals: finder precision (found white cells, as the differential counts them: a white-cell type or
unclassified, that are one white cell), not_a_cell boxes typed as a white-cell type, blast calls
(served ``label`` blast, after abstention) among blast_like (sensitivity), lymphoid and other_white
(1 - specificity). Labelled boxes the finder no longer returns, and found boxes without a label, are counted.
Cells of one frame, and frames of one block (capture series), are not independent: beside the Wilson
interval each share has a cluster-bootstrap 95% interval that resamples the blocks (15 here), the honest one.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from core.aspect import true_shape
from core.paths import ALL4_ORIGINAL
from core.registry import CLASS_NAMES, LEUKOCYTE_CLASSES
from evaluation.cell_served import is_white, open_rgb
from training.cell_eval import box_iou
from training.operating_point import wilson_interval

__all__ = ["LABELS", "CATEGORIES", "load_labels", "sample_frames", "match", "summarise", "evaluate", "main"]

LABELS = Path(__file__).with_name("cell_labels_all4.json")
ROOT = ALL4_ORIGINAL
CATEGORIES = ("blast_like", "lymphoid", "other_white", "not_a_cell", "two_cells", "unsure")
ONE_WHITE_CELL = ("blast_like", "lymphoid", "other_white")
#: the frame classes, in the order the labelled frames were drawn
FRAME_CLASSES = tuple(CLASS_NAMES)
IOU = 0.5
SEED = 29
CELLS_PER_CLASS = 75
BLAST = "blast"
#: resamples of the cluster bootstrap
BOOTSTRAP = 2000


def load_labels(path: Path = LABELS) -> dict[str, Any]:
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data


def sample_frames(pipeline: Any, seed: int = SEED, per_class: int = CELLS_PER_CLASS) -> list[dict[str, Any]]:
    """How the labelled frames were drawn: per class, the validation frames (sorted by relpath) shuffled by one
    ``random.Random(seed)``, taken until the pipeline returned ``per_class`` cells; every cell kept, unlabelled."""
    from training.data import load_split

    val = load_split().val
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for name in FRAME_CLASSES:
        frames = sorted((s for s in val if s.class_name == name), key=lambda s: s.relpath)
        rng.shuffle(frames)
        found = 0
        for s in frames:
            if found >= per_class:
                break
            image = open_rgb(s.path)
            cells = [{"box": c["box"], "label": None} for c in pipeline.cells(image)]
            out.append({"relpath": s.relpath, "class": name, "size": list(image.size), "cells": cells})
            found += len(cells)
    return out


def match(found: Sequence[Sequence[float]], labelled: Sequence[Sequence[float]], iou: float = IOU) -> dict[int, int]:
    """One-to-one matching ``{labelled index: found index}``: pairs with IoU >= ``iou``, greedily by IoU."""
    pairs = sorted(
        ((box_iou(f, g), fi, gi) for fi, f in enumerate(found) for gi, g in enumerate(labelled)), reverse=True
    )
    used_f: set[int] = set()
    out: dict[int, int] = {}
    for value, fi, gi in pairs:
        if value < iou:
            break
        if fi not in used_f and gi not in out:
            used_f.add(fi)
            out[gi] = fi
    return out


def _rate(rs: Sequence[dict[str, Any]], hit: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """``hit`` among ``rs``: the share, its Wilson 95% interval (cells as independent) and a 95% percentile
    interval from resampling the records' clusters (``cluster``: the frame's block) with replacement."""
    hits = [bool(hit(r)) for r in rs]
    count, total = sum(hits), len(hits)
    out: dict[str, Any] = {"count": count, "of": total, "share": round(count / total, 4) if total else None}
    if not total:
        return out | {"wilson95": None, "cluster_bootstrap95": None}
    low, high = wilson_interval(count, total)
    clusters = sorted({str(r.get("cluster")) for r in rs})
    k = np.zeros(len(clusters))
    n = np.zeros(len(clusters))
    for r, h in zip(rs, hits, strict=True):
        i = clusters.index(str(r.get("cluster")))
        k[i] += h
        n[i] += 1
    draw = np.random.default_rng(0).integers(0, len(clusters), size=(BOOTSTRAP, len(clusters)))
    shares = k[draw].sum(1) / n[draw].sum(1)
    boot = [round(float(q), 4) for q in np.percentile(shares, [2.5, 97.5])]
    return out | {"wilson95": [round(low, 4), round(high, 4)], "cluster_bootstrap95": boot, "clusters": len(clusters)}


def _one_cell(r: dict[str, Any]) -> bool:
    return r["category"] in ONE_WHITE_CELL


def _called_blast(r: dict[str, Any]) -> bool:
    return bool(r["served"]["label"] == BLAST)


def summarise(records: Sequence[dict[str, Any]], unlabelled_found: int = 0) -> dict[str, Any]:
    """The metrics from per-labelled-cell records ``{"class", "category", "served", "cluster"}`` (served: the
    matched answer entry, or None when the finder returned no box at IoU >= 0.5; cluster: the frame's block)."""
    matched = [r for r in records if r["served"] is not None]
    malignant = [r for r in matched if r["class"] != "Benign"]
    white = [r for r in matched if is_white(r["served"])]
    sure_white = [r for r in white if r["category"] != "unsure"]

    def of(category: str) -> list[dict[str, Any]]:
        return [r for r in matched if r["category"] == category]

    called = [r for r in malignant if _called_blast(r) and r["category"] != "unsure"]
    mix: dict[str, dict[str, int]] = {}
    for category in CATEGORIES:
        mix[category] = dict(Counter(str(r["served"]["label"]) for r in of(category)).most_common())
    return {
        "labelled_cells": len(records),
        "labelled_by_category": dict(Counter(r["category"] for r in records)),
        "matched": len(matched),
        "unmatched_labelled": dict(Counter(r["category"] for r in records if r["served"] is None)),
        "found_without_label": unlabelled_found,
        "finder_precision_all_frames": _rate(sure_white, _one_cell),
        "finder_precision_unsure_as_wrong": _rate(white, _one_cell),
        "finder_precision_malignant_frames": _rate([r for r in sure_white if r["class"] != "Benign"], _one_cell),
        "finder_precision_benign_frames": _rate([r for r in sure_white if r["class"] == "Benign"], _one_cell),
        "white_cells_found_labelled_unsure": len(white) - len(sure_white),
        "not_a_cell_typed_white": _rate(of("not_a_cell"), lambda r: r["served"]["label"] in LEUKOCYTE_CLASSES),
        "not_a_cell_counted_white_incl_unclassified": _rate(of("not_a_cell"), lambda r: is_white(r["served"])),
        "blast_calls_among_blast_like": _rate(of("blast_like"), _called_blast),
        "blast_calls_among_lymphoid_benign": _rate(of("lymphoid"), _called_blast),
        "blast_calls_among_other_white": _rate(of("other_white"), _called_blast),
        "blast_calls_among_two_cells": _rate(of("two_cells"), _called_blast),
        "blast_calls_among_not_a_cell": _rate(of("not_a_cell"), _called_blast),
        "blast_calls_malignant_frames_that_are_one_blast_like_cell": _rate(
            called, lambda r: r["category"] == "blast_like"
        ),
        "served_labels_by_category": mix,
    }


def evaluate(pipeline: Any, labels: dict[str, Any], root: Path = ROOT, iou: float = IOU) -> dict[str, Any]:
    """Run the served pipeline on the labelled frames, match and summarise."""
    from training.data import load_split

    block = {s.relpath: s.block for s in load_split().val}
    records: list[dict[str, Any]] = []
    unlabelled = 0
    for frame in labels["frames"]:
        cells = pipeline.cells(open_rgb(root / frame["relpath"]))
        labelled = frame["cells"]
        pairs = match([c["box"] for c in cells], [c["box"] for c in labelled], iou)
        unlabelled += len(cells) - len(pairs)
        for gi, cell in enumerate(labelled):
            served = cells[pairs[gi]] if gi in pairs else None
            records.append(
                {
                    "class": frame["class"],
                    "category": cell["label"],
                    "served": served,
                    "cluster": block.get(frame["relpath"], frame["relpath"]),
                }
            )
    out = summarise(records, unlabelled)
    out["frames"] = len(labels["frames"])
    out["frames_by_class"] = dict(Counter(f["class"] for f in labels["frames"]))
    out["iou"] = iou
    return out


def render_montages(
    labels: dict[str, Any], out_dir: Path, root: Path = ROOT, cols: int = 6, rows: int = 5
) -> list[Path]:
    """The blind montages the labels were given on: cells in ``montage_index`` order, each crop the box grown 50%
    (at least 36 px) on the frame at its true shape, upscaled to 115 px, box outlined; no class, no answer."""
    cells = sorted(
        ((c["montage_index"], f["relpath"], c["box"]) for f in labels["frames"] for c in f["cells"]), key=lambda t: t[0]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tile, head, per = 130, 14, cols * rows
    shaped: dict[str, tuple[Image.Image, float]] = {}
    written = []
    for start in range(0, len(cells), per):
        sheet = Image.new("RGB", (cols * tile, rows * (tile + head)), "white")
        draw = ImageDraw.Draw(sheet)
        for k, (index, rel, box) in enumerate(cells[start : start + per]):
            if rel not in shaped:
                shaped[rel] = true_shape(open_rgb(root / rel))
            image, scale = shaped[rel]
            x0, y0, x1, y1 = box[0] * scale, box[1], box[2] * scale, box[3]
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            hw, hh = max((x1 - x0) * 1.5, 36) / 2, max((y1 - y0) * 1.5, 36) / 2
            cb = (int(cx - hw), int(cy - hh), int(cx + hw) + 1, int(cy + hh) + 1)
            crop = image.crop(cb)
            f = 115 / max(crop.size)
            crop = crop.resize(
                (max(1, round(crop.width * f)), max(1, round(crop.height * f))), Image.Resampling.LANCZOS
            )
            ImageDraw.Draw(crop).rectangle(
                [(x0 - cb[0]) * f, (y0 - cb[1]) * f, (x1 - cb[0]) * f, (y1 - cb[1]) * f], outline=(0, 200, 0)
            )
            ox, oy = (k % cols) * tile, (k // cols) * (tile + head)
            draw.text((ox + 3, oy + 1), f"{index}  {x1 - x0:.0f}x{y1 - y0:.0f}", fill="black")
            sheet.paste(crop, (ox + (tile - crop.width) // 2, oy + head + (tile - crop.height) // 2))
        path = out_dir / f"m{start // per:02d}.png"
        sheet.save(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="artifacts/wbc_cells/model", help="the typer dir (model/ of wbc_cells.mar)")
    p.add_argument("--labels", type=Path, default=LABELS)
    p.add_argument("--out", type=Path, default=Path("artifacts/wbc_cells/cell_labels.json"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--montage", type=Path, help="only render the labelling montages into this folder")
    args = p.parse_args(argv)
    labels = load_labels(args.labels)
    if args.montage:
        for path in render_montages(labels, args.montage):
            print(path)
        return 0
    import torch

    from handlers.cell_runtime import CellPipeline

    torch.set_num_threads(args.threads)
    result = evaluate(CellPipeline.from_typer_dir(args.model), labels)
    result["model"] = str(args.model)
    result["labels"] = str(args.labels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
