"""``make retrain MODEL=wbc_cells``: a candidate cell typer trained from the served one on its original training
cells plus the lab's confirmed cells, packed as a versioned archive.

Recipe (version 2.0's, head-only on frozen features; bounded on a CPU): the served version's typer is loaded from
its archive (the promoted default, else the shipped ``model_store/wbc_cells.mar``); the whole network stays frozen
and each training cell's pooled feature vector (the classifier's input) is computed once, from the crop exactly as
served (:mod:`model_update.cell_data`); only the classifier (9 types x 1280 features) trains, starting from the
served one's rows, with 2.0's sampling (:func:`training.train_cells.sample_weights`: PBC balanced, BCCD
``--bccd-share``, the B-ALL frames' weak cells ``--weak-share``, half of them blasts), AdamW, label smoothing
0.05 and the shared loop (:func:`training.loop.fit`). Each of the lab's cells is drawn ``--lab-repeat`` times per
epoch on average (a few hundred retyped cells weigh against thousands of original ones). Cells of the locked cell
test set are never trained on. 2.0 also trained on augmented views (degraded resolution, swapped colour
statistics); this recipe uses one clean view per cell, and its candidate starts from 2.0's classifier.

The candidate keeps the served version's temperature and abstention threshold (the locked set measures whether
they still hold: the gate's calibration bound); its card is the served card with the new version and a
``training.lab_update`` block. Output: ``<versions root>/wbc_cells/wbc_cells-<version>.mar`` and ``.card.json``
(2.0 -> 2.1). Measured on the 2-core CPU: see docs/model_updates.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.registry import CELL_CLASSES, cell_model_names
from model_update.cell_data import CellItem, LockedCellSet, crop, training_cells
from model_update.lab_data import DATASETS_DIR, latest_dataset
from model_update.retrain import candidate_of, pack_candidate, unpack, update_record
from served_model.cell_typer import CellTyper, build_typer_transform, load_typer, save_typer
from serving.versions import Versions
from training.loop import Checkpoint, Log, Source, fit, seed_everything
from training.train_cells import CropSet, sample_weights

__all__ = ["pooled_features", "train_head", "main"]


@torch.no_grad()
def pooled_features(typer: CellTyper, cells: Sequence[CellItem], log: Log, batch: int = 64) -> torch.Tensor:
    """The frozen typer's pooled features (the classifier's input) of every cell's served crop (N x F)."""
    transform = build_typer_transform(typer.spec)
    typer.eval()
    out, t0 = [], time.time()
    for i in range(0, len(cells), batch):
        x = torch.stack([transform(crop(c, typer.spec)) for c in cells[i : i + batch]])
        out.append(typer.forward_head(typer.forward_features(x), pre_logits=True))
        done = min(i + batch, len(cells))
        if done % (batch * 10) == 0 or done == len(cells):
            log(f"features: {done}/{len(cells)} cells, {time.time() - t0:.0f} s")
    return torch.cat(out) if out else torch.zeros((0, typer.num_features))


def _draw_weights(base: Sequence[CellItem], n_lab: int, lab_repeat: float, bccd: float, weak: float) -> np.ndarray:
    """Per-cell draw probabilities: the original cells as 2.0 drew them, each lab cell ``lab_repeat`` draws."""
    crops = CropSet()
    crops.labels = [CELL_CLASSES.index(c.label) for c in base]
    crops.sources = [c.source for c in base]
    # only labels and sources are read
    crops.images = [None] * len(base)  # type: ignore[list-item]
    orig = sample_weights(crops, bccd, weak) * len(base)
    w = np.concatenate([orig, np.full(n_lab, float(lab_repeat))])
    return w / w.sum()


def train_head(
    typer: CellTyper,
    feats: torch.Tensor,
    labels: torch.Tensor,
    weights: np.ndarray,
    work: Path,
    args: argparse.Namespace,
    log: Log,
) -> dict[str, Any]:
    """Train the typer's classifier on the pooled features (everything else frozen); returns fit's result."""
    head = typer.net.classifier
    for p in typer.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(list(head.parameters()), lr=args.lr, weight_decay=args.weight_decay)
    per_epoch = int(round(len(feats) * args.draws))
    steps = max(1, math.ceil(per_epoch / args.batch_size))

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = np.random.default_rng([args.seed, epoch])
        order = torch.from_numpy(gen.choice(len(feats), size=per_epoch, replace=True, p=weights))
        for b in range(steps):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            yield feats[idx], labels[idx]

    def loss(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch
        return F.cross_entropy(head(x), y, label_smoothing=0.05), len(y)

    def train_mode() -> None:
        typer.eval()  # the frozen network's batch-norm statistics stay as served
        head.train()

    return fit(
        model=typer,
        opt=opt,
        source=Source(steps, batches),
        loss=loss,
        epochs=args.epochs,
        log=log,
        clip=[],
        train_mode=train_mode,
        checkpoint=Checkpoint(work / "checkpoint.pt"),
        warmup=min(steps, 10),
    )


def save_candidate(typer: CellTyper, version: str, base_config: dict[str, Any]) -> Any:
    """``save(model_dir)`` for :func:`model_update.retrain.pack_candidate`: the typer with its spec's version."""
    typer.spec = dataclasses.replace(typer.spec, version=version)

    def save(directory: Path) -> Path:
        return save_typer(typer.eval(), directory, extra={"training": base_config.get("training", {})})

    return save


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="wbc_cells", choices=cell_model_names())
    ap.add_argument("--dataset", type=Path, default=None, help="a lab dataset directory (default: the newest export)")
    ap.add_argument("--datasets", type=Path, default=DATASETS_DIR)
    ap.add_argument("--versions", type=Path, default=None)
    ap.add_argument("--model-store", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--weight-decay", type=float, default=0.02)
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--draws", type=float, default=1.0, help="draws per epoch, as a share of the training cells")
    ap.add_argument("--lab-repeat", type=float, default=4.0)
    ap.add_argument("--bccd-share", type=float, default=0.2)
    ap.add_argument("--weak-share", type=float, default=0.5)
    ap.add_argument("--weak-every", type=int, default=8, help="B-ALL training frames: every N-th (finder per frame)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="PBC/BCCD cells per class, locked set and training (tests)")
    ap.add_argument("--weak-frames", type=int, default=None, help="at most this many B-ALL frames per part (tests)")
    ap.add_argument("--device", default="cpu", help="cpu (the head trains in seconds; features dominate)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    versions = Versions.of(args.model, args.versions, args.model_store)
    dataset = args.dataset or latest_dataset(args.datasets)
    mar, base_card, version = candidate_of(versions)
    with tempfile.TemporaryDirectory(prefix=f"retrain-{args.model}-") as tmp_str:
        work = Path(tmp_str)
        log = Log(work / "train.log")
        model_dir = unpack(mar, work / "base") / "model"
        typer = load_typer(model_dir)
        temperature = float(base_card["temperature"])
        t0 = time.time()
        locked = LockedCellSet.open(
            versions.root.parent, typer, temperature, dataset, args.limit, weak_frames=args.weak_frames
        )
        base, lab, artefacts = training_cells(
            locked, typer, temperature, dataset, args.limit, args.weak_every, args.weak_frames
        )
        counts = Counter(f"{c.source.split(':')[0]}:{c.label}" for c in base + lab)
        log(
            f"{args.model}: candidate {version} from {mar.name} (v{base_card['version']}); {len(base)} original + "
            f"{len(lab)} lab cells (x{args.lab_repeat}; {artefacts} artefacts left out) from "
            f"{dataset.name if dataset else 'no lab dataset'}; {dict(sorted(counts.items()))}; locked cell set "
            f"{locked.sha256[:12]} ({len(locked.record['items'])} cells) excluded"
        )
        cells = base + lab
        feats = pooled_features(typer, cells, log)
        labels = torch.tensor([CELL_CLASSES.index(c.label) for c in cells])
        weights = _draw_weights(base, len(lab), args.lab_repeat, args.bccd_share, args.weak_share)
        result = train_head(typer, feats, labels, weights, work, args, log)
        wall = time.time() - t0
        recipe = (
            f"frozen typer, classifier only from the served one's, on pooled features of one clean served crop per "
            f"cell; AdamW lr {args.lr}, weight decay {args.weight_decay}, batch {args.batch_size}, {args.epochs} "
            f"epoch(s) of {args.draws} x cells draws (BCCD share {args.bccd_share}, weak share {args.weak_share}, "
            f"B-ALL training frames every {args.weak_every}), label smoothing 0.05, seed {args.seed}"
        )
        update = update_record(
            base_card,
            mar,
            dataset,
            locked,
            result,
            wall,
            "cpu",
            n_original=dict(Counter(c.source for c in base)),
            n_lab=len(lab),
            lab_artefacts_left_out=artefacts,
            lab_repeat=args.lab_repeat,
            recipe=recipe,
        )
        base_config = json.loads((model_dir / "model_config.json").read_text())
        target = pack_candidate(versions, save_candidate(typer, version, base_config), base_card, version, update)
        (target.parent / f"{args.model}-{version}.train.log").write_text((work / "train.log").read_text())
    print(f"candidate {args.model} {version}: {target} ({wall:.0f} s); next: make gate MODEL={args.model}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
