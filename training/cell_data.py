"""The cell-level data sets and their fixed train/validation splits (one definition for every user).

- **PBC** (``$LEUKEMIA_SHARED/data/pbc/<class>/*.jpg``): single-cell crops of the eight
  :data:`core.registry.CELL_CLASSES`. No patient identifiers are published, so the split is per
  image: per class, files sorted by name, shuffled with a fixed seed, ``val_fraction`` to validation.
- **BCCD** (``$LEUKEMIA_SHARED/data/bccd``): 640x480 frames with VOC boxes (``Annotations/``), a white
  cell type per frame (``labels.csv``) and nucleus/cytoplasm masks (``masks/``). Split per frame by a
  hash of the file name (stable when frames are added or removed), ``val_fraction`` to validation.

The cell finder is tuned on the BCCD training frames and measured on the validation frames; the
typer trains on PBC train + BCCD train crops and is measured on PBC val and BCCD val crops.
"""

from __future__ import annotations

import csv
import hashlib
import random
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from core.paths import BCCD, PBC
from core.registry import CELL_CLASSES

__all__ = [
    "SEED",
    "VAL_FRACTION",
    "CellSample",
    "Box",
    "BccdFrame",
    "pbc_samples",
    "pbc_split",
    "bccd_frames",
    "bccd_split",
    "BCCD_TYPE_TO_CLASS",
    "PBC_CLASSES",
]

#: the PBC data set's eight folders: every cell type but ``blast`` (learned from the B-ALL frames,
#: :mod:`training.cell_weak`); labels stay indices into :data:`CELL_CLASSES`
PBC_CLASSES: tuple[str, ...] = tuple(c for c in CELL_CLASSES if c != "blast")
SEED = 20261123
VAL_FRACTION = 0.2
#: BCCD's white-cell type names (labels.csv) mapped to :data:`CELL_CLASSES`
BCCD_TYPE_TO_CLASS = {
    "BASOPHIL": "basophil",
    "EOSINOPHIL": "eosinophil",
    "LYMPHOCYTE": "lymphocyte",
    "MONOCYTE": "monocyte",
    "NEUTROPHIL": "neutrophil",
}


@dataclass(frozen=True)
class CellSample:
    """One single-cell image with its type (index into :data:`CELL_CLASSES`)."""

    path: Path
    label: int

    @property
    def class_name(self) -> str:
        return CELL_CLASSES[self.label]


@dataclass(frozen=True)
class Box:
    """A VOC box in pixel coordinates (x1, y1 exclusive as in the contract's ``box``)."""

    kind: str  # "WBC", "RBC" or "Platelets"
    x0: int
    y0: int
    x1: int
    y1: int

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


@dataclass(frozen=True)
class BccdFrame:
    """One BCCD frame: image, boxes, the frame's white-cell type(s) and its mask (when there is one)."""

    image: Path
    boxes: tuple[Box, ...]
    types: tuple[str, ...]  # CELL_CLASSES names; empty when the frame has no type, two for a few frames
    mask: Path | None = field(default=None)

    @property
    def name(self) -> str:
        return self.image.stem

    @property
    def wbc_boxes(self) -> list[Box]:
        return [b for b in self.boxes if b.kind == "WBC"]

    @property
    def single_type(self) -> str | None:
        """The type of the frame's white cell when the frame has exactly one type and one WBC box."""
        return self.types[0] if len(self.types) == 1 and len(self.wbc_boxes) == 1 else None


def pbc_samples(root: Path = PBC) -> list[CellSample]:
    """Every PBC image, sorted by class then file name."""
    out = []
    for name in PBC_CLASSES:
        label = CELL_CLASSES.index(name)
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"PBC class folder missing: {folder}")
        out += [CellSample(p, label) for p in sorted(folder.iterdir()) if p.suffix.lower() in {".jpg", ".jpeg", ".png"}]
    return out


def pbc_split(
    root: Path = PBC, *, seed: int = SEED, val_fraction: float = VAL_FRACTION
) -> tuple[list[CellSample], list[CellSample]]:
    """(train, val), stratified per class; the same inputs always give the same split."""
    train: list[CellSample] = []
    val: list[CellSample] = []
    samples = pbc_samples(root)
    for label in (CELL_CLASSES.index(name) for name in PBC_CLASSES):
        group = [s for s in samples if s.label == label]
        random.Random(seed + label).shuffle(group)
        n_val = round(len(group) * val_fraction)
        val += group[:n_val]
        train += group[n_val:]
    return train, val


def _read_boxes(xml_path: Path) -> tuple[Box, ...]:
    root = ET.parse(xml_path).getroot()
    boxes = []
    for obj in root.iter("object"):
        kind = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if bb is None:
            continue
        x0, y0, x1, y1 = (round(float(bb.findtext(k) or 0)) for k in ("xmin", "ymin", "xmax", "ymax"))
        if x1 > x0 and y1 > y0:
            boxes.append(Box(kind, x0, y0, x1, y1))
    return tuple(boxes)


def bccd_frames(root: Path = BCCD) -> list[BccdFrame]:
    """Every BCCD frame that has an annotation file, sorted by name."""
    types: dict[str, tuple[str, ...]] = {}
    with (root / "labels.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            names = [t.strip().upper() for t in (row.get("wbc_type") or "").split(",") if t.strip()]
            types[Path(row["image"]).stem] = tuple(BCCD_TYPE_TO_CLASS[t] for t in names if t in BCCD_TYPE_TO_CLASS)
    frames = []
    for image in sorted((root / "JPEGImages").glob("*.jpg")):
        xml = root / "Annotations" / f"{image.stem}.xml"
        if not xml.is_file():
            continue
        mask = root / "masks" / f"{image.stem}.png"
        frames.append(BccdFrame(image, _read_boxes(xml), types.get(image.stem, ()), mask if mask.is_file() else None))
    return frames


def _in_val(name: str, seed: int, val_fraction: float) -> bool:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def bccd_split(
    root: Path = BCCD, *, seed: int = SEED, val_fraction: float = VAL_FRACTION
) -> tuple[list[BccdFrame], list[BccdFrame]]:
    """(train, val) per frame by a hash of the frame's name."""
    frames = bccd_frames(root)
    val = [f for f in frames if _in_val(f.name, seed, val_fraction)]
    train = [f for f in frames if not _in_val(f.name, seed, val_fraction)]
    return train, val
