"""``make retrain MODEL=<frame model>``: a candidate version trained from the served weights on the original
training data plus the lab's confirmed frames, packed as a versioned archive.

Recipe (the frame models' later stages, bounded on a CPU): the served version's weights are loaded from its
archive (the promoted default, else the shipped ``model_store/<model>.mar``); the CNN stage stays frozen and
each training frame's feature map is computed once (the handler's own preprocessing, :func:`served_model.transforms.
build_eval_transform`); the token projection, the sequence stage and the head train on them with the shared loop
(:func:`training.loop.fit`: warm-up then cosine, clipping, a checkpoint per epoch) and the cached recipe's
geometric augmentation (90-degree rotations and flips of the grids). The lab's frames are repeated
``--lab-repeat`` times per epoch, so that a few hundred sign-offs weigh against two thousand original frames.
Frames of the locked test set are never trained on (:mod:`model_update.lab_data`).

The candidate keeps the served version's temperature, abstention and Benign thresholds and smear gate (their
fitting data, the validation blocks, is now part of the locked test set and may not be fitted on): the gate
(:mod:`model_update.gate`) checks on the locked set that its calibration and its Benign safety hold with them.
What reads the pooled features, which the retrained sequence stage moves, is refitted to the candidate's own
features of the original training frames (:func:`refit_card`: the out-of-distribution score, the smear gate's
reported feature statistics). ``--other-benign`` adds other labs' normal frames as Benign
(:mod:`model_update.other_benign`).

``--end-to-end``: the CNN stage trains too. Every parameter is fine-tuned from the served weights on the frames
themselves, each drawn anew every epoch through the training recipe's augmentation (:class:`training.augment.
TrainAugment`: flips, 90-degree rotations, crop jitter, HED stain, hue, saturation, brightness, white balance,
grayscale), so that the layers that see colour and scale learn what the other sources look like. Measured on the
2-core CPU, 3 epochs of 2626 frames: 158-297 s for mobilenetv3_lstm, about 10 minutes for the EfficientNets
(frozen recipe: 137-193 s); xception_bigru (224 px) about 25 minutes an epoch. The out-of-distribution score and
the gate's feature statistics are refitted to the fine-tuned CNN's features of the original frames.
Its card is the served one with the new version and a ``training.lab_update`` block (base version, dataset,
recipe, history); its validation metrics are the base version's, the gate report holds the candidate's.

Output: ``<versions root>/<model>/<model>-<version>.mar`` and ``.card.json`` (serving.versions); the version is the
base's with its last number raised (1.1 -> 1.2). Measured on the 2-core CPU: see docs/guides/model_updates.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.registry import get_spec, model_names
from model_update import other_benign
from model_update.lab_data import DATASETS_DIR, Frame, LockedSet, LockedTestSet, latest_dataset, training_frames
from model_update.ood_refit import refit_features
from release.archive import archive_model
from served_model import compat  # noqa: F401  (before timm)
from served_model.network import HybridClassifier, load_model, save_model
from served_model.smear_gate import SmearGate
from served_model.transforms import build_eval_transform
from serving.versions import Versions
from training.augment import TrainAugment, geometric_grid
from training.data import load_split
from training.image_data import ImageDataset, image_batches
from training.loop import Checkpoint, Log, Source, fit, hardware_info, seed_everything

__all__ = [
    "base_archive",
    "candidate_of",
    "update_record",
    "unpack",
    "feature_maps",
    "Schedule",
    "retrain",
    "retrain_end_to_end",
    "pooled_features",
    "refit_card",
    "pack_candidate",
    "main",
]


def base_archive(versions: Versions) -> Path:
    """The archive of the version served as default now (what a candidate starts from and is gated against)."""
    default = versions.default_version()
    return versions.store_archive() if default == versions.base_version() else versions.archive(default)


def candidate_of(versions: Versions) -> tuple[Path, dict[str, Any], str]:
    """(the served version's archive a candidate starts from, its card, the candidate's version)."""
    card = versions.card(versions.default_version()) or {}
    return base_archive(versions), card, versions.next_version(str(card["version"]))


def update_record(
    base_card: dict[str, Any],
    mar: Path,
    dataset: Path | None,
    locked: LockedSet,
    result: dict[str, Any],
    wall: float,
    device: str,
    **counts: Any,
) -> dict[str, Any]:
    """The candidate card's ``training.lab_update`` block: what it started from, on which data, how it went."""
    return {
        "base_version": base_card["version"],
        "base_archive": mar.name,
        "dataset": dataset.name if dataset else None,
        "locked_test_set": locked.sha256,
        **counts,
        "history": result["history"],
        "wall_time_s": round(wall, 1),
        "hardware": hardware_info(device),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "metrics are the base version's; the gate report measures this version on the locked test set",
    }


def unpack(mar: Path, dest: Path) -> Path:
    """``model/`` and ``model_card.json`` of an archive into ``dest`` (the layout TorchServe unpacks)."""
    with zipfile.ZipFile(mar) as z:
        for name in z.namelist():
            if (name.startswith("model/") and not name.endswith("/")) or name == "model_card.json":
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
    return dest


@torch.no_grad()
def feature_maps(model: HybridClassifier, frames: Sequence[Frame], device: str, log: Log) -> torch.Tensor:
    """The frozen CNN stage's maps of every frame (fp16, N x C x H x W)."""
    transform = build_eval_transform(model.spec)
    model.eval().to(device)
    out, t0 = [], time.time()
    for i in range(0, len(frames), 32):
        x = torch.stack([transform(Image.open(f.path).convert("RGB")) for f in frames[i : i + 32]]).to(device)
        out.append(model.forward_cnn(x).half().cpu())
        done = min(i + 32, len(frames))
        if done % 320 == 0 or done == len(frames):
            log(f"feature maps: {done}/{len(frames)} frames, {time.time() - t0:.0f} s")
    return torch.cat(out)


def cached_feature_maps(
    model: HybridClassifier, frames: Sequence[Frame], archive: Path, cache: Path | None, device: str, log: Log
) -> torch.Tensor:
    """:func:`feature_maps`, kept in ``cache`` (a file) under a key of the archive and every frame's hash, so that
    a second candidate from the same base and frames (another learning rate, more epochs) skips the CNN stage."""
    if cache is None:
        return feature_maps(model, frames, device, log)
    digest = hashlib.sha256(archive.read_bytes())
    for f in frames:
        digest.update(f.sha256.encode())
    key = digest.hexdigest()
    if cache.is_file():
        stored = torch.load(cache, map_location="cpu")
        if stored.get("key") == key:
            log(f"feature maps: {len(frames)} frames from {cache}")
            return stored["maps"]
    maps = feature_maps(model, frames, device, log)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "maps": maps}, cache)
    return maps


@dataclass(frozen=True)
class Schedule:
    """How a candidate trains: epochs, learning rate, batch size, seed, device; ``work``: its checkpoint's folder."""

    work: Path
    epochs: int
    lr: float
    batch_size: int
    seed: int
    device: str


def retrain(
    model: HybridClassifier, maps: torch.Tensor, labels: torch.Tensor, run: Schedule, log: Log
) -> dict[str, Any]:
    """Train token projection, sequence stage and head on the maps (the backbone frozen)."""
    lr, batch_size, seed, device = run.lr, run.batch_size, run.seed, run.device
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    params = model.sequence_parameters()
    opt = torch.optim.AdamW([{"params": params, "base_lr": lr}], lr=lr, weight_decay=0.05)
    n = len(labels)
    steps = math.ceil(n / batch_size)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(n, generator=g)
        for step in range(steps):
            idx = order[step * batch_size : (step + 1) * batch_size]
            k, flip = int(torch.randint(0, 4, (1,), generator=g)), bool(torch.randint(0, 2, (1,), generator=g))
            yield geometric_grid(maps[idx].float(), k, flip), labels[idx]  # type: ignore[misc]

    def loss(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch
        logits = model.forward_head(model.forward_sequence(x.to(device)))
        return F.cross_entropy(logits, y.to(device)), len(y)

    def train_mode() -> None:
        model.train()
        model.backbone.eval()

    model.to(device)
    return fit(
        model=model,
        opt=opt,
        source=Source(steps, batches),
        loss=loss,
        epochs=run.epochs,
        log=log,
        clip=params,
        train_mode=train_mode,
        checkpoint=Checkpoint(run.work / "checkpoint.pt"),
        warmup=min(steps, 10),
    )


def retrain_end_to_end(model: HybridClassifier, frames: Sequence[Frame], run: Schedule, log: Log) -> dict[str, Any]:
    """Fine-tune every parameter, the CNN stage's included, on the augmented frames (see the module docstring)."""
    lr, batch_size, seed, device = run.lr, run.batch_size, run.seed, run.device
    for p in model.parameters():
        p.requires_grad_(True)
    ds = ImageDataset(frames, model.spec, TrainAugment(seed=seed), None)
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": params, "base_lr": lr}], lr=lr, weight_decay=0.05)
    steps = math.ceil(len(ds) / batch_size)

    def loss(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y, _ = batch
        return F.cross_entropy(model(x.to(device)), y.to(device)), len(y)

    model.to(device)
    return fit(
        model=model,
        opt=opt,
        source=Source(steps, image_batches(ds, batch_size, seed * 1000)),
        loss=loss,
        epochs=run.epochs,
        log=log,
        clip=params,
        checkpoint=Checkpoint(run.work / "checkpoint.pt"),
        warmup=min(steps, 10),
    )


@torch.no_grad()
def pooled_features(model: HybridClassifier, maps: torch.Tensor, device: str) -> np.ndarray:
    """The pooled (penultimate) features of cached feature maps: what the out-of-distribution score reads."""
    model.eval().to(device)
    out = [
        model.forward_head(model.forward_sequence(maps[i : i + 64].float().to(device)), pre_logits=True).cpu()
        for i in range(0, len(maps), 64)
    ]
    return torch.cat(out).double().numpy()


def original_rows(frames: Sequence[Frame]) -> list[int]:
    """Indices of the original data set's frames (what the out-of-distribution score is fitted on)."""
    return [i for i, f in enumerate(frames) if f.source.startswith("original:")]


def refit_card(
    model: HybridClassifier,
    maps: torch.Tensor,
    frames: Sequence[Frame],
    card: dict[str, Any],
    base_pooled: np.ndarray,
    data: str | None,
    device: str,
) -> dict[str, Any]:
    """``card`` with what reads the pooled features refitted to ``model``'s features of the original training
    frames: the out-of-distribution score (:func:`model_update.ood_refit.refit_features`, scaled by the base version's
    measured ratio, ``base_pooled``: the base version's features of the same frames; the validation blocks are the
    locked test set and are not used) and the smear gate's feature statistics (reported, never deciding)."""
    block = {s.relpath: s.block for s in load_split(data).train}
    rows = original_rows(frames)
    blocks = [block[frames[i].source.split(":", 1)[1]] for i in rows]
    labels = np.array([frames[i].label for i in rows])
    pooled = pooled_features(model, maps[rows], device)
    out = dict(card)
    if card.get("ood"):
        out["ood"] = refit_features(card["ood"], pooled, labels, blocks, base_pooled)
    if card.get("smear_gate", {}).get("feature_mean") is not None:
        gate = SmearGate.from_dict(card["smear_gate"])
        gate.fit_feature_statistics(pooled)
        out["smear_gate"] = gate.to_dict()
    return out


def pack_candidate(
    versions: Versions,
    save: Callable[[Path], object],
    base_card: dict[str, Any],
    version: str,
    update: dict[str, Any],
) -> Path:
    """Archive the model that ``save(model_dir)`` writes as ``version`` into the versions store; returns the archive.

    The card is the served one with the new version and ``training.lab_update``."""
    card = json.loads(json.dumps(base_card))
    card["version"] = version
    card["training"] = {**card.get("training", {}), "lab_update": update}
    with tempfile.TemporaryDirectory(prefix=f"candidate-{versions.model}-") as tmp_str:
        artifact = Path(tmp_str) / versions.model
        save(artifact / "model")
        (artifact / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        mar = archive_model(artifact, Path(tmp_str) / "out")
        versions.root.mkdir(parents=True, exist_ok=True)
        target = versions.archive(version)
        shutil.move(str(mar), target)
        versions.card_path(version).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=model_names())
    ap.add_argument("--dataset", type=Path, default=None, help="a lab dataset directory (default: the newest export)")
    ap.add_argument("--datasets", type=Path, default=DATASETS_DIR)
    ap.add_argument("--data", default=None, help="the original data set's root (default ../shared/data/all4/original)")
    ap.add_argument("--versions", type=Path, default=None, help="versions root (default serving.versions)")
    ap.add_argument("--model-store", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lab-repeat", type=int, default=4)
    ap.add_argument(
        "--other-benign",
        type=int,
        default=0,
        metavar="VIEWS",
        help="add the train half of the other labs' normal frames (model_update.other_benign) as Benign, "
        "each as it is and VIEWS-1 changed copies (0: none)",
    )
    ap.add_argument(
        "--end-to-end", action="store_true", help="fine-tune the CNN stage too, on augmented images (module docstring)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--maps-cache", type=Path, default=None, help="keep the CNN stage's maps in this file (reused)")
    ap.add_argument("--base-limit", type=int, default=None, help="use every k-th original frame, this many (tests)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    get_spec(args.model)
    versions = Versions.of(args.model, args.versions, args.model_store)
    dataset = args.dataset or latest_dataset(args.datasets)
    locked = LockedTestSet.open(versions.root.parent, args.data, dataset, args.base_limit)
    base, lab = training_frames(locked, args.data, dataset, args.base_limit)
    mar, base_card, version = candidate_of(versions)
    with tempfile.TemporaryDirectory(prefix=f"retrain-{args.model}-") as tmp_str:
        work = Path(tmp_str)
        log = Log(work / "train.log")
        other = other_benign.training_frames(work / "other", args.other_benign) if args.other_benign else []
        frames = base + lab * max(1, args.lab_repeat) + other
        log(
            f"{args.model}: candidate {version} from {mar.name} (v{base_card['version']}); {len(base)} original + "
            f"{len(lab)} lab frames (x{args.lab_repeat}) from {dataset.name if dataset else 'no lab dataset'} + "
            f"{len(other)} other labs' normal frames; "
            f"locked test set {locked.sha256[:12]} ({len(locked.record['items'])} frames) excluded"
        )
        model = load_model(unpack(mar, work / "base") / "model")
        t0 = time.time()
        schedule = Schedule(work, args.epochs, args.lr, args.batch_size, args.seed, args.device)
        if args.end_to_end:
            originals = [frames[i] for i in original_rows(frames)]
            base_pooled = pooled_features(
                model, cached_feature_maps(model, originals, mar, args.maps_cache, args.device, log), args.device
            )
            result = retrain_end_to_end(model, frames, schedule, log)
            maps = feature_maps(model, originals, args.device, log)  # the fine-tuned CNN stage's
            base_card = refit_card(model, maps, originals, base_card, base_pooled, args.data, args.device)
            recipe = (
                f"end to end from the served weights (CNN stage included) on images drawn through the training "
                f"recipe's augmentation every epoch, AdamW lr {args.lr}, batch {args.batch_size}, {args.epochs} "
                f"epoch(s), seed {args.seed}"
            )
        else:
            maps = cached_feature_maps(model, frames, mar, args.maps_cache, args.device, log)
            labels = torch.tensor([f.label for f in frames])
            base_pooled = pooled_features(model, maps[original_rows(frames)], args.device)
            result = retrain(model, maps, labels, schedule, log)
            base_card = refit_card(model, maps, frames, base_card, base_pooled, args.data, args.device)
            recipe = (
                f"frozen CNN stage; token projection + sequence stage + head, AdamW lr {args.lr}, batch "
                f"{args.batch_size}, {args.epochs} epoch(s), rotations/flips of the feature grids, seed {args.seed}"
            )
        if base_card.get("ood"):
            log(f"out-of-distribution score refitted: {base_card['ood']['info']['refitted']}")
        wall = time.time() - t0
        update = update_record(
            base_card, mar, dataset, locked, result, wall, args.device, n_original=len(base), n_lab=len(lab)
        )
        update.update(
            lab_repeat=args.lab_repeat,
            n_other_benign=len(other),
            other_benign_views=args.other_benign,
            recipe=recipe,
        )
        target = pack_candidate(
            versions, lambda d: save_model(model.eval().cpu(), d, dtype=torch.float16), base_card, version, update
        )
        (target.parent / f"{args.model}-{version}.train.log").write_text((work / "train.log").read_text())
    print(f"candidate {args.model} {version}: {target} ({wall:.0f} s); next: make gate MODEL={args.model}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
