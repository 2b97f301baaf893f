"""The cells the update loop trains and gates the cell typer (``wbc_cells``) on.

A cell is an image file, a box and a type (:class:`CellItem`). The box is in the pixels of the image at its true
shape (:func:`core.aspect.true_shape`: a squashed 224x224 frame widened to 299x224), where the served finder works
and the typer's crop is cut (:func:`training.cell_typer.crop_cell`), so a cell is cropped exactly as served; no box
means the whole image is the crop (a PBC image is itself a centred single-cell crop, as in the typer's training).

Sources, with the splits version 2.0 was trained and validated on (training.train_cells):

- ``pbc``: the PBC images (:func:`training.cell_data.pbc_split`), eight normal types;
- ``bccd``: the white cell of each single-type, single-box BCCD frame (:func:`training.cell_data.bccd_split`);
- ``all4``: the weakly labelled cells of the B-ALL frames (:mod:`training.cell_weak`: the served finder's usable
  white cells; a cell of a malignant frame is a ``blast`` unless the typer is sure it is a granulocyte, a cell of a
  Benign frame a ``lymphocyte`` unless the typer is sure of another normal type). The 8-type typer that labelled
  2.0's cells is not in the tree: the served typer's calibrated probabilities over the eight normal types (its
  blast logit left out, renormalised) stand in for it. Frames split by block (:func:`training.data.load_split`);
- ``lab``: the cells of the lab's dataset (``make dataset``: confirmed, reclassified; an ``artefact`` is not a
  type the typer has and is left out, counted), on the side of the specimen split asked for, boxes mapped from
  the uploaded image's pixels to its true shape.

Locked cell test set (``<versions root>/locked_test/cells.json``): frozen the first time ``make retrain`` or
``make gate`` asks for it for the cell model, from PBC's and BCCD's validation cells, the weakly labelled cells of
the B-ALL validation blocks and the cells of the test side of the lab's newest dataset; every image with the
SHA-256 of its bytes, re-hashed at every use (a missing or changed file stops the gate). No image of it is ever
trained on (:func:`training_cells` drops any cell whose image hash is in it).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from core.aspect import true_shape, x_scale_of
from core.registry import CELL_CLASSES, CellModelSpec
from model_update.lab_data import LockedSet, LockedSetError
from served_model.cell_typer import CellTyper, build_typer_transform, crop_cell
from training.cell_data import bccd_split, pbc_split
from training.cell_weak import frame_cells, usable, weak_label
from training.data import load_split

__all__ = [
    "CELLS_FILE",
    "ARTEFACT",
    "CellItem",
    "LockedCellSet",
    "crop",
    "lab_cells",
    "original_cells",
    "training_cells",
    "weak_cells",
]

CELLS_FILE = Path("locked_test") / "cells.json"
ARTEFACT = "artefact"


@dataclass(frozen=True)
class CellItem:
    path: Path
    box: tuple[int, int, int, int] | None  # at the image's true shape; None: the whole image is the crop
    label: str
    sha256: str  # of the image file
    source: str  # "pbc", "bccd", "all4" or "lab:<dataset>"

    @property
    def key(self) -> str:
        """The cell's identity (image hash and box)."""
        return f"{self.sha256}:{'whole' if self.box is None else ','.join(map(str, self.box))}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "path": str(self.path),
            "sha256": self.sha256,
            "box": None if self.box is None else list(self.box),
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CellItem:
        box = None if d["box"] is None else tuple(int(v) for v in d["box"])
        return cls(Path(d["path"]), box, d["label"], d["sha256"], d["source"])  # type: ignore[arg-type]


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def crop(item: CellItem, spec: CellModelSpec) -> Image.Image:
    """The square crop the served typer sees for the cell (native resolution)."""
    with Image.open(item.path) as im:
        image = im.convert("RGB")
    if item.box is None:
        return image
    return crop_cell(true_shape(image)[0], item.box, spec)


def _capped(samples: Sequence[Any], cap: int | None) -> list[Any]:
    """At most ``cap`` per class (the first ones; the splits are already shuffled)."""
    if not cap:
        return list(samples)
    seen: Counter[int] = Counter()
    out = []
    for s in samples:
        if seen[s.label] < cap:
            seen[s.label] += 1
            out.append(s)
    return out


def original_cells(part: str, limit: int | None = None) -> list[CellItem]:
    """PBC's and BCCD's cells of ``part`` ("train" or "val"); ``limit``: at most this many per class (tests)."""
    pbc = pbc_split()[0 if part == "train" else 1]
    out = [CellItem(s.path, None, CELL_CLASSES[s.label], _sha256(s.path), "pbc") for s in _capped(pbc, limit)]
    bccd = [f for f in bccd_split()[0 if part == "train" else 1] if f.single_type is not None]
    for f in bccd[: limit * 4 if limit else None]:
        box = tuple(int(v) for v in f.wbc_boxes[0].as_list())
        out.append(CellItem(Path(f.image), box, f.single_type, _sha256(Path(f.image)), "bccd"))  # type: ignore[arg-type]
    return out


@torch.no_grad()
def weak_cells(
    part: str, every: int, typer: CellTyper, temperature: float, frames: int | None = None
) -> list[CellItem]:
    """The weakly labelled cells of the B-ALL frames of ``part`` (every ``every``-th frame, at most ``frames``)."""
    split = load_split()
    samples = (split.train if part == "train" else split.val)[:: max(1, every)]
    if frames is not None and frames < len(samples):  # spread over the list: every class and many blocks
        samples = [samples[int(i * len(samples) / frames)] for i in range(frames)]
    transform = build_typer_transform(typer.spec)
    normal = [i for i, c in enumerate(typer.spec.classes) if c != "blast"]
    out = []
    for s in samples:
        fc = frame_cells(s.path)
        boxes = [b for b, sc in zip(fc.boxes, fc.scores, strict=True) if usable(sc, b, fc.rbc_radius)]
        if not boxes:
            continue
        logits = typer(torch.stack([transform(crop_cell(fc.image, b, typer.spec)) for b in boxes]))
        probs8 = torch.softmax(logits[:, normal] / temperature, 1).numpy()
        sha = _sha256(s.path)
        for b, p in zip(boxes, probs8, strict=True):
            name = weak_label(s.class_name != "Benign", p, tuple(typer.spec.classes[i] for i in normal))
            if name is not None:
                out.append(CellItem(s.path, tuple(int(v) for v in b), name, sha, "all4"))  # type: ignore[arg-type]
    return out


def lab_cells(dataset: Path | None, side: str) -> tuple[list[CellItem], int]:
    """(the dataset's typed cells on one side of its specimen split, how many artefacts were left out)."""
    if dataset is None:
        return [], 0
    manifest = json.loads((Path(dataset) / "manifest.json").read_text())
    files = {r["sha256"]: Path(dataset) / r["file"] for r in manifest["images"]}
    out, artefacts = [], 0
    for r in manifest.get("cells", []):
        if r["side"] != side:
            continue
        if r["label"] == ARTEFACT or r["label"] not in CELL_CLASSES:
            artefacts += 1
            continue
        path = files[r["image_sha256"]]
        with Image.open(path) as im:
            x_scale = x_scale_of(im.size)
        x0, y0, x1, y1 = r["box"]
        box = (int(round(x0 * x_scale)), int(y0), int(round(x1 * x_scale)), int(y1))
        out.append(CellItem(path, box, r["label"], r["image_sha256"], f"lab:{manifest['dataset']}"))
    return out, artefacts


class LockedCellSet(LockedSet):
    """The frozen cells the gate compares cell typer versions on."""

    IDENTITY = ("source", "sha256", "box", "label")

    @classmethod
    def open(
        cls,
        root: Path,
        typer: CellTyper,
        temperature: float,
        dataset: Path | None = None,
        limit: int | None = None,
        weak_every: int = 1,
        weak_frames: int | None = None,
    ) -> LockedCellSet:
        """The locked cell set under ``root`` (the versions root), frozen now (labelling the B-ALL validation
        cells with ``typer``, the served one) if it does not exist yet."""
        path = Path(root) / CELLS_FILE
        if path.is_file():
            return cls(path, json.loads(path.read_text()))
        lab, artefacts = lab_cells(dataset, "test")
        items = original_cells("val", limit) + weak_cells("val", weak_every, typer, temperature, weak_frames) + lab
        record = {
            "frozen_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rule": "PBC and BCCD validation cells"
            + (f" (at most {limit} per class)" if limit else "")
            + f", the weakly labelled cells of the B-ALL validation frames (every {weak_every}"
            + (f", at most {weak_frames} frames" if weak_frames else "")
            + f"; labelled by the served typer {typer.spec.version}) + the test side of the lab's dataset "
            + (f"{dataset.name} ({artefacts} artefacts left out)" if dataset else "(none exported yet)"),
            "counts": dict(Counter(f"{i.source.split(':')[0]}:{i.label}" for i in items)),
            "items": [i.as_dict() for i in items],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
        return cls(path, record)

    def cells(self) -> list[CellItem]:
        """Every item, its image re-hashed; raises :class:`LockedSetError` on a missing or changed file."""
        checked: dict[str, str] = {}
        out = []
        for d in self.record["items"]:
            item = CellItem.from_dict(d)
            if str(item.path) not in checked:
                if not item.path.is_file():
                    raise LockedSetError(f"locked cell set {self.path}: {item.path} is missing")
                checked[str(item.path)] = _sha256(item.path)
            if checked[str(item.path)] != item.sha256:
                raise LockedSetError(f"locked cell set {self.path}: {item.path} changed since it was frozen")
            out.append(item)
        return out


def training_cells(
    locked: LockedCellSet,
    typer: CellTyper,
    temperature: float,
    dataset: Path | None,
    limit: int | None = None,
    weak_every: int = 8,
    weak_frames: int | None = None,
) -> tuple[list[CellItem], list[CellItem], int]:
    """(original training cells, the lab's training-side cells, lab artefacts left out); none in the locked set."""
    banned = locked.hashes
    base = original_cells("train", limit) + weak_cells("train", weak_every, typer, temperature, weak_frames)
    lab, artefacts = lab_cells(dataset, "train")
    return [c for c in base if c.sha256 not in banned], [c for c in lab if c.sha256 not in banned], artefacts
