"""The frames the update loop trains and tests on: the original data set, the lab's exported sign-offs, and the
locked test set.

Locked test set (``<versions root>/locked_test/frames.json``): frozen the first time it is asked for (by
``make retrain`` or ``make gate``), from the original data set's validation blocks (:func:`training.data.
load_split`: the blocks every shipped frame model was evaluated on, never trained on) and the test side of the
lab's newest dataset (whole specimens, portal.models_registry.dataset). Each item is kept with the SHA-256 of its
bytes; every later use re-reads and re-hashes every file and refuses to run when one is missing or changed.
Nothing in it is ever trained on: :func:`training_frames` drops any frame whose hash is in it. Lab specimens
signed off after the freeze join neither side of the gate until a new set is frozen on purpose (delete the
file): a gate result stays comparable with the previous ones.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.registry import CLASS_NAMES
from serving.torchserve import REPO
from training.data import load_split

__all__ = [
    "DATASETS_DIR",
    "Frame",
    "LockedSet",
    "LockedTestSet",
    "LockedSetError",
    "latest_dataset",
    "lab_frames",
    "training_frames",
]

DATASETS_DIR = REPO / "var" / "datasets"
LOCKED_FILE = Path("locked_test") / "frames.json"


class LockedSetError(RuntimeError):
    """The locked test set's files are missing or changed since it was frozen."""


@dataclass(frozen=True)
class Frame:
    path: Path
    label: int
    sha256: str
    source: str  # "original:<relpath>" or "lab:<dataset>"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def latest_dataset(datasets: Path = DATASETS_DIR) -> Path | None:
    """The newest export (``<datasets>/LATEST``), or None when the lab has exported none."""
    pointer = Path(datasets) / "LATEST"
    if not pointer.is_file():
        return None
    path = Path(datasets) / pointer.read_text().strip()
    return path if (path / "manifest.json").is_file() else None


def lab_frames(dataset: Path | None, side: str) -> list[Frame]:
    """The dataset's signed-off images on one side of its specimen split, with their final labels."""
    if dataset is None:
        return []
    manifest = json.loads((Path(dataset) / "manifest.json").read_text())
    return [
        Frame(Path(dataset) / r["file"], CLASS_NAMES.index(r["label"]), r["sha256"], f"lab:{manifest['dataset']}")
        for r in manifest["images"]
        if r["side"] == side
    ]


def _original_frames(data: str | None, part: str, limit: int | None) -> list[Frame]:
    split = load_split(data)
    samples = split.val if part == "val" else split.train
    if limit is not None and limit < len(samples):  # every k-th: all classes and many blocks stay in
        step = len(samples) / limit
        samples = [samples[int(i * step)] for i in range(limit)]
    return [Frame(s.path, s.label, _sha256(s.path), f"original:{s.relpath}") for s in samples]


class LockedSet:
    """A frozen test set's record (``items``, each with its file's ``sha256``), frame or cell."""

    #: the item fields the set's identity is the hash of
    IDENTITY: tuple[str, ...] = ("source", "sha256", "label")

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        self.path = path
        self.record = record

    @property
    def sha256(self) -> str:
        """The set's identity: the hash of its items' :attr:`IDENTITY` fields."""
        items = [tuple(i[k] for k in self.IDENTITY) for i in self.record["items"]]
        return hashlib.sha256(json.dumps(items).encode()).hexdigest()

    @property
    def hashes(self) -> set[str]:
        """The SHA-256 of every file in the set (never trained on)."""
        return {i["sha256"] for i in self.record["items"]}


class LockedTestSet(LockedSet):
    """The frozen frames the gate compares versions on."""

    @classmethod
    def open(
        cls,
        root: Path,
        data: str | None = None,
        dataset: Path | None = None,
        base_limit: int | None = None,
    ) -> LockedTestSet:
        """The locked set under ``root`` (the versions root), frozen now if it does not exist yet."""
        path = Path(root) / LOCKED_FILE
        if path.is_file():
            return cls(path, json.loads(path.read_text()))
        frames = _original_frames(data, "val", base_limit) + lab_frames(dataset, "test")
        record = {
            "frozen_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rule": "the original data set's validation blocks"
            + (f" (every k-th frame, {base_limit})" if base_limit else "")
            + " + the test side of the lab's dataset "
            + (dataset.name if dataset else "(none exported yet)"),
            "items": [
                {"source": f.source, "path": str(f.path), "sha256": f.sha256, "label": CLASS_NAMES[f.label]}
                for f in frames
            ],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
        return cls(path, record)

    def frames(self) -> list[Frame]:
        """Every item, its bytes re-hashed; raises :class:`LockedSetError` on a missing or changed file."""
        out = []
        for item in self.record["items"]:
            path = Path(item["path"])
            if not path.is_file():
                raise LockedSetError(f"locked test set {self.path}: {path} is missing")
            if _sha256(path) != item["sha256"]:
                raise LockedSetError(f"locked test set {self.path}: {path} changed since it was frozen")
            out.append(Frame(path, CLASS_NAMES.index(item["label"]), item["sha256"], item["source"]))
        return out


def training_frames(
    locked: LockedTestSet, data: str | None, dataset: Path | None, base_limit: int | None = None
) -> tuple[list[Frame], list[Frame]]:
    """(original training frames, the lab's training-side frames), none of them in the locked set."""
    banned = locked.hashes
    base = [f for f in _original_frames(data, "train", base_limit) if f.sha256 not in banned]
    lab = [f for f in lab_frames(dataset, "train") if f.sha256 not in banned]
    return base, lab
