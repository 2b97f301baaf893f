"""Data set reading and the block-wise train/validation split.

The layout is the public Kaggle one: ``<root>/{Benign,Early,Pre,Pro}/*.jpg``. If ``MANIFEST.csv``
exists in the root or its parent (the shared copy has ``all4/MANIFEST.csv`` beside
``all4/original/``), its ``block`` and ``md5`` columns are used; otherwise blocks are derived from
the file numbers (24 consecutive numbers per block, the manifest's own rule) and md5 is computed.

Split rule: images are grouped by block; blocks that share an exact duplicate (same md5) are merged
into one group; per class, groups are shuffled with a fixed seed and the first ones are taken for
validation until about ``val_fraction`` of that class's images are there. So no block and no
duplicate pair is ever on both sides, every class is represented on both sides, and the same
inputs always give the same split.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.paths import ALL4_ORIGINAL
from core.registry import CLASS_NAMES

__all__ = [
    "DEFAULT_DATA_ROOT",
    "BLOCK_SIZE",
    "SPLIT_RULE",
    "Sample",
    "Split",
    "DataError",
    "find_manifest",
    "load_samples",
    "split_samples",
    "load_split",
    "manifest_sha256",
    "block_of",
]

#: default data root, relative to the repository root
DEFAULT_DATA_ROOT = ALL4_ORIGINAL
BLOCK_SIZE = 24
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
SPLIT_RULE = (
    "block-wise (24 consecutive file numbers per block, MANIFEST.csv block column when present); blocks sharing "
    "an exact duplicate (md5) merged; per class, blocks shuffled with seed {seed} and ~{pct}% of images' blocks "
    "to validation"
)


class DataError(ValueError):
    """The data folder does not have the expected layout."""


@dataclass(frozen=True)
class Sample:
    path: Path
    relpath: str
    label: int
    block: str
    md5: str

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]


@dataclass(frozen=True)
class Split:
    train: list[Sample]
    val: list[Sample]
    seed: int
    val_fraction: float

    def rule(self) -> str:
        return SPLIT_RULE.format(seed=self.seed, pct=round(self.val_fraction * 100))


def _md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def block_of(class_name: str, filename: str) -> str:
    """Block id from the last number in a file name: numbers 1-24 -> ``<class>-000``, 25-48 -> 001, ..."""
    numbers = re.findall(r"(\d+)", Path(filename).stem)
    if not numbers:
        return f"{class_name}-{filename}"  # no number: the file is its own block
    return f"{class_name}-{(int(numbers[-1]) - 1) // BLOCK_SIZE:03d}"


def find_manifest(root: Path) -> Path | None:
    for candidate in (root / "MANIFEST.csv", root.parent / "MANIFEST.csv"):
        if candidate.is_file():
            return candidate
    return None


def manifest_sha256(root: str | os.PathLike[str] | None = None) -> str | None:
    root = Path(root) if root is not None else DEFAULT_DATA_ROOT
    m = find_manifest(root)
    if m is None:
        return None
    return hashlib.sha256(m.read_bytes()).hexdigest()


def load_samples(root: str | os.PathLike[str] | None = None, classes: Sequence[str] = CLASS_NAMES) -> list[Sample]:
    """All images under ``root/<class>/``, sorted by relative path."""
    root = Path(root) if root is not None else DEFAULT_DATA_ROOT
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    missing = [c for c in classes if not (root / c).is_dir()]
    if missing:
        raise DataError(f"data folder {root} lacks class folder(s) {', '.join(missing)}; expected {', '.join(classes)}")
    manifest: dict[str, dict[str, str]] = {}
    mpath = find_manifest(root)
    if mpath is not None:
        with open(mpath, newline="") as f:
            manifest = {row["relpath"]: row for row in csv.DictReader(f)}
    samples: list[Sample] = []
    for label, cname in enumerate(classes):
        for p in sorted((root / cname).iterdir()):
            if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
                continue
            rel = f"{cname}/{p.name}"
            row = manifest.get(rel)
            if row is not None:
                if row["class"] != cname:
                    raise DataError(f"{rel}: manifest says class {row['class']}")
                samples.append(Sample(p, rel, label, row["block"], row["md5"]))
            else:
                samples.append(Sample(p, rel, label, block_of(cname, p.name), _md5(p)))
    if not samples:
        raise DataError(f"no images found under {root}")
    return samples


def _groups(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """Blocks merged by shared md5 (union-find); key = smallest block id of the group."""
    samples = list(samples)
    parent: dict[str, str] = {s.block: s.block for s in samples}

    def find(b: str) -> str:
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        return b

    first_block: dict[str, str] = {}
    for s in samples:
        if s.md5 in first_block:
            a, b = find(first_block[s.md5]), find(s.block)
            if a != b:
                parent[max(a, b)] = min(a, b)
        else:
            first_block[s.md5] = s.block
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[find(s.block)].append(s)
    return dict(groups)


def split_samples(samples: Sequence[Sample], val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Deterministic block-wise split, stratified by class (see the module docstring)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be in (0, 1)")
    groups = _groups(samples)
    by_class: dict[int, list[str]] = defaultdict(list)
    for key, members in groups.items():
        # a group spanning classes is assigned by its majority class (does not happen in the data set)
        labels = [m.label for m in members]
        by_class[max(set(labels), key=labels.count)].append(key)
    val_keys: set[str] = set()
    for label in sorted(by_class):
        keys = sorted(by_class[label])
        random.Random(f"{seed}-{label}").shuffle(keys)
        total = sum(len(groups[k]) for k in keys)
        taken = 0
        for k in keys[:-1]:  # always leave at least one group for training
            if taken + len(groups[k]) / 2 > val_fraction * total:
                break
            val_keys.add(k)
            taken += len(groups[k])
    train = sorted((s for k, g in groups.items() if k not in val_keys for s in g), key=lambda s: s.relpath)
    val = sorted((s for k in val_keys for s in groups[k]), key=lambda s: s.relpath)
    return Split(train=train, val=val, seed=seed, val_fraction=val_fraction)


def load_split(root: str | os.PathLike[str] | None = None, val_fraction: float = 0.2, seed: int = 0) -> Split:
    return split_samples(load_samples(root), val_fraction=val_fraction, seed=seed)
