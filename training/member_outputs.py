"""The frame models' validation logits, computed once from the committed archives and cached.

``python -m training.member_outputs`` unpacks ``model/`` of each ``model_store/<model>.mar`` (the
shipped fp16 weights, loaded with :func:`served_model.network.load_model`), runs it on the block-wise
validation split (:func:`training.evaluate.model_logits`, the evaluation's own inference) and writes
``artifacts/ensemble/val_logits.npz``: per model the raw logits, plus the labels, blocks and relative
paths of the frames, and per model its card version and the sha256 of the archive's ``model/`` (a cache
made from other weights is recomputed; a repack that changes only the card or the code keeps it). The
ensemble fit and the Benign operating points (:mod:`training.ensemble`) read only this cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.registry import model_names

__all__ = ["CACHE_FILE", "MemberOutputs", "load_outputs", "compute_outputs", "weights_digest", "main"]

REPO = Path(__file__).resolve().parent.parent
CACHE_FILE = Path("artifacts") / "ensemble" / "val_logits.npz"


class MemberOutputs:
    """Validation logits of every member, frame-aligned, with the frames' labels and blocks."""

    def __init__(
        self,
        labels: np.ndarray,
        blocks: Sequence[str],
        relpaths: Sequence[str],
        logits: dict[str, np.ndarray],
        versions: dict[str, str],
        sha256: dict[str, str],
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.blocks = list(blocks)
        self.relpaths = list(relpaths)
        self.logits = {k: np.asarray(v, dtype=np.float64) for k, v in logits.items()}
        self.versions = dict(versions)
        self.sha256 = dict(sha256)
        for name, lg in self.logits.items():
            if lg.shape[0] != len(self.labels):
                raise ValueError(f"{name}: {lg.shape[0]} rows of logits for {len(self.labels)} frames")

    @property
    def members(self) -> list[str]:
        return list(self.logits)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"members": self.members, "versions": self.versions, "sha256": self.sha256}
        arrays: dict[str, np.ndarray] = {f"logits__{k}": v for k, v in self.logits.items()}
        arrays |= {
            "labels": self.labels,
            "blocks": np.asarray(self.blocks),
            "relpaths": np.asarray(self.relpaths),
            "meta": np.asarray(json.dumps(meta)),
        }
        np.savez(path, **arrays)  # type: ignore[arg-type]


def load_outputs(path: Path) -> MemberOutputs:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        return MemberOutputs(
            labels=z["labels"],
            blocks=[str(b) for b in z["blocks"]],
            relpaths=[str(r) for r in z["relpaths"]],
            logits={m: z[f"logits__{m}"] for m in meta["members"]},
            versions=meta["versions"],
            sha256=meta["sha256"],
        )


def weights_digest(mar: Path) -> str:
    """sha256 over the names and bytes of the ``model/`` entries of ``mar``: what the logits are computed from."""
    h = hashlib.sha256()
    with zipfile.ZipFile(mar) as z:
        for name in sorted(n for n in z.namelist() if n.startswith("model/") and not n.endswith("/")):
            h.update(name.encode() + b"\0")
            h.update(z.read(name))
    return h.hexdigest()


def _mar_logits(mar: Path, split: Any) -> tuple[np.ndarray, str]:
    """(validation logits, card version) of the weights inside ``mar``."""
    from served_model import compat  # noqa: F401  (before timm)
    from served_model.network import load_model
    from training.evaluate import model_logits

    with tempfile.TemporaryDirectory(prefix="member-") as tmp, zipfile.ZipFile(mar) as z:
        z.extractall(tmp, [n for n in z.namelist() if n.startswith("model/") or n == "model_card.json"])
        card = json.loads((Path(tmp) / "model_card.json").read_text())
        model = load_model(Path(tmp) / "model")
    logits, _, _ = model_logits(model, split, None, None)
    return logits, str(card["version"])


def compute_outputs(
    store: Path, cache: Path, data: str | None = None, models: Sequence[str] | None = None, threads: int = 2
) -> MemberOutputs:
    """The cache for the archives in ``store``, recomputing only members whose archive changed."""
    import torch

    from training.data import load_split

    torch.set_num_threads(threads)
    split = load_split(data)
    labels = np.array([s.label for s in split.val])
    relpaths = [s.relpath for s in split.val]
    old = load_outputs(cache) if cache.is_file() else None
    if old is not None and old.relpaths != relpaths:
        old = None  # another split: start over
    logits: dict[str, np.ndarray] = {}
    versions: dict[str, str] = {}
    sha: dict[str, str] = {}
    for name in models or model_names():
        mar = store / f"{name}.mar"
        digest = weights_digest(mar)
        if old is not None and old.sha256.get(name) == digest:
            logits[name], versions[name], sha[name] = old.logits[name], old.versions[name], digest
            print(f"{name}: cached ({cache})", flush=True)
            continue
        t0 = time.time()
        logits[name], versions[name] = _mar_logits(mar, split)
        sha[name] = digest
        acc = float((logits[name].argmax(axis=1) == labels).mean())
        print(
            f"{name} {versions[name]}: {len(labels)} frames in {time.time() - t0:.0f} s, accuracy {acc:.4f}", flush=True
        )
    out = MemberOutputs(labels, [s.block for s in split.val], relpaths, logits, versions, sha)
    out.save(cache)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=REPO / "model_store")
    p.add_argument("--cache", type=Path, default=REPO / CACHE_FILE)
    p.add_argument("--data", default=None)
    p.add_argument("--model", action="append", help="only these members (repeatable); default: every frame model")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    compute_outputs(args.store, args.cache, args.data, args.model, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
