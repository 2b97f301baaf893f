"""Weakly labelled cells of the B-ALL frames (all4): the blast examples the cell typer learns from.

No single-cell blast images exist in the project's data. What exists are frame labels: the white
cells of Early/Pre/Pro (B-ALL) frames are mostly lymphoblasts, the Benign frames show hematogones
(benign lymphoid precursors, the blast's mimic) and normal cells. This module turns frames into
labelled cell crops:

1. every frame at its true shape (:func:`core.aspect.true_shape`: the 224x224 frames are 4:3 camera
   frames squashed to a square), the served finder (:func:`cells.segment.find_cells`) on it;
2. each white cell cropped exactly as served (:func:`training.cell_typer.crop_cell`) and typed by the
   shipped 8-type typer (its calibrated probabilities are kept with the crop);
3. :func:`weak_label`: a cell of a malignant frame is a ``blast`` unless the 8-type typer is sure it is
   a granulocyte (neutrophil, eosinophil, basophil: the non-lymphoid cells a B-ALL smear still shows);
   a cell of a Benign frame is a ``lymphocyte`` (hematogones are benign lymphoid cells) unless the
   typer is sure of another normal type, which it then keeps. Cells the finder is unsure of (low score,
   outside a white cell's size range in units of the frame's red-cell radius) are left out.

Frames are split by block exactly as the frame models (:func:`training.data.load_split`), so a
cell's frame is in training or validation with all its block.

    python -m training.cell_weak [--out artifacts/all4_cells.pt] [--every 2]

writes the crops (native resolution, uint8) with their metadata and the 8-type probabilities.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cells.segment import WBC, find_cells_in, segment
from core.aspect import true_shape
from core.registry import CELL_CLASSES
from served_model.cell_typer import build_typer_transform, crop_cell, load_typer
from served_model.stain import lab_stats, lab_to_rgb, rgb_to_lab
from training.data import load_split

__all__ = [
    "SURE",
    "MIN_SCORE",
    "weak_label",
    "FrameCells",
    "frame_cells",
    "WeakCells",
    "load_weak",
    "Degrade",
    "CrossStats",
    "main",
]

#: the 8-type typer's calibrated probability above which its call overrides the frame's weak label
SURE = 0.9
#: finder score under which a cell is not used as a training example (specks, faint fragments)
MIN_SCORE = 0.5
#: non-lymphoid types a B-ALL frame's cell may confidently be (it is then not called a blast)
GRANULOCYTES = ("neutrophil", "eosinophil", "basophil")


def weak_label(malignant: bool, probs: np.ndarray, classes: tuple[str, ...] = CELL_CLASSES) -> str | None:
    """The weak type of one cell from its frame's label and the 8-type typer's calibrated probabilities.

    ``probs`` is over the first ``len(probs)`` of ``classes`` (the eight normal types). ``None``: not used.
    """
    top = int(np.argmax(probs))
    name, sure = classes[top], float(probs[top]) >= SURE
    if malignant:
        return None if (sure and name in GRANULOCYTES) else "blast"
    if sure:
        return name
    return "lymphocyte"


#: a usable cell's box side, in units of its frame's red-cell radius: smaller is a fragment, larger a clump
SIDE_RANGE = (2.0, 6.0)
#: largest plausible red-cell radius (px) in a widened 299x224 all4 frame (measured median 12.9 px, 5-95%
#: 8.5-31): above it the radius estimate took a clump of touching cells for one cell (15% of the frames, 980
#: measured) and its finds are clumps; such frames give no training example
MAX_RBC_RADIUS = 20.0


@dataclass
class WeakCells:
    """Weakly labelled all4 cells of one split part: crops (native size), labels, frame of each."""

    crops: list[Image.Image] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)
    frame_classes: list[str] = field(default_factory=list)


def usable(score: float, box: Sequence[int], r: float) -> bool:
    """Whether a found cell is a training example: sure enough and of a single white cell's size."""
    side = max(box[2] - box[0], box[3] - box[1])
    return score >= MIN_SCORE and 0 < r <= MAX_RBC_RADIUS and SIDE_RANGE[0] <= side / r <= SIDE_RANGE[1]


def load_weak(path: Path, part: str, classes: tuple[str, ...] = CELL_CLASSES) -> WeakCells:
    """The usable cells of ``part`` ("train" or "val") from a file written by :func:`build`, weakly labelled."""
    data = torch.load(path, weights_only=False)
    out = WeakCells()
    for i, crop in enumerate(data["crop"]):
        if data["split"][i] != part or not usable(data["score"][i], data["box"][i], data["r"][i]):
            continue
        name = weak_label(data["cls"][i] != "Benign", data["probs8"][i], tuple(data["typer_classes"]))
        if name is None:
            continue
        out.crops.append(Image.fromarray(crop))
        out.labels.append(classes.index(name))
        out.frames.append(data["frame"][i])
        out.frame_classes.append(data["cls"][i])
    return out


@dataclass
class Degrade:
    """The crop seen at a B-ALL frame's resolution: shrunk to ``side`` px, JPEG-compressed, enlarged back.

    A PBC crop (a 360 px image, the cell about 45% of it) shrunk to 40-80 px puts the cell at 18-36 px,
    the size of a white cell in a widened all4 frame; JPEG at quality 60-95 adds the frames' blockiness.
    Applied to the sharp sources (PBC, BCCD) so that "small and blurry" cannot mean ``blast``.
    """

    p: float = 0.5
    side: tuple[int, int] = (40, 80)
    quality: tuple[int, int] = (60, 95)

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        if rng.random() >= self.p:
            return image
        side = int(rng.integers(self.side[0], self.side[1] + 1))
        small = image.resize((side, side), Image.Resampling.BOX)
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=int(rng.integers(self.quality[0], self.quality[1] + 1)))
        buf.seek(0)
        with Image.open(buf) as im:
            return im.convert("RGB").resize(image.size, Image.Resampling.BICUBIC)


class CrossStats:
    """Colour swapped between sources and frame classes: a crop's L*a*b* mean/std moved to another crop's.

    The all4 frames' acquisition colour differs by class (Benign vs B-ALL frames, so by weak label),
    PBC's and BCCD's by lab. With probability ``p`` a view takes the colour statistics of a crop drawn
    from ``pool`` (all sources, all labels), so colour carries no label.
    """

    def __init__(self, pool: Sequence[Image.Image], p: float = 0.5) -> None:
        self.p = p
        self.stats = [lab_stats(im) for im in pool]

    def apply(self, image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, bool]:
        """``(image, whether its colour was swapped)``."""
        if rng.random() >= self.p or not self.stats:
            return image, False
        mean_t, std_t = self.stats[int(rng.integers(len(self.stats)))]
        lab = rgb_to_lab(image)
        mean, std = lab.reshape(-1, 3).mean(axis=0), np.maximum(lab.reshape(-1, 3).std(axis=0), 1e-6)
        return Image.fromarray(lab_to_rgb((lab - mean) / std * std_t + mean_t)), True

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return self.apply(image, rng)[0]


@dataclass
class FrameCells:
    """The white cells found on one frame at its true shape."""

    image: Image.Image  # at true shape
    boxes: list[tuple[int, int, int, int]]
    scores: list[float]
    rbc_radius: float


def frame_cells(path: Path) -> FrameCells:
    """The served finder's white cells on the frame at ``path`` (widened when squashed)."""
    with Image.open(path) as im:
        image, _ = true_shape(im.convert("RGB"))
    seg = segment(np.asarray(image))
    found = [c for c in find_cells_in(seg) if c.kind == WBC]
    r = float(seg.maps.rbc_radius) if seg.maps is not None else 0.0
    return FrameCells(image, [c.box for c in found], [c.score for c in found], r)


def build(out: Path, every: int, typer_dir: Path, log: Any = None) -> None:
    log = log or (lambda msg: print(msg, flush=True))
    torch.set_num_threads(1)
    split = load_split()
    typer = load_typer(typer_dir)
    transform = build_typer_transform(typer.spec)
    temperature = float(typer.calibration["temperature"])
    rows: dict[str, list[Any]] = {k: [] for k in ("crop", "frame", "cls", "block", "split", "box", "score", "r")}
    probs: list[np.ndarray] = []
    frames = [(s, "train") for s in split.train[::every]] + [(s, "val") for s in split.val]
    t0 = time.time()
    for i, (s, part) in enumerate(frames):
        fc = frame_cells(s.path)
        crops = [crop_cell(fc.image, b, typer.spec) for b in fc.boxes]
        if crops:
            with torch.inference_mode():
                logits = typer(torch.stack([transform(c) for c in crops]))
                probs.append(torch.softmax(logits / temperature, 1).numpy())
        for c, b, sc in zip(crops, fc.boxes, fc.scores, strict=True):
            rows["crop"].append(np.asarray(c))
            rows["frame"].append(s.relpath)
            rows["cls"].append(s.class_name)
            rows["block"].append(s.block)
            rows["split"].append(part)
            rows["box"].append(b)
            rows["score"].append(sc)
            rows["r"].append(fc.rbc_radius)
        if (i + 1) % 50 == 0:
            log(f"{i + 1}/{len(frames)} frames, {len(rows['crop'])} cells, {time.time() - t0:.0f}s")
    data: dict[str, Any] = dict(rows)
    data["probs8"] = np.concatenate(probs) if probs else np.zeros((0, len(typer.spec.classes)))
    data["typer_classes"] = list(typer.spec.classes)
    data["frames"] = [(s.relpath, s.class_name, s.block, part) for s, part in frames]
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, out)
    log(f"saved {len(rows['crop'])} cells of {len(frames)} frames to {out} in {time.time() - t0:.0f}s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="artifacts/all4_cells.pt")
    p.add_argument("--every", type=int, default=4, help="use every N-th training frame (neighbours are alike)")
    p.add_argument("--typer", default="artifacts/old_mar/model", help="the 8-type typer's model directory")
    args = p.parse_args(argv)
    build(Path(args.out), args.every, Path(args.typer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
