"""Train the cell typer of ``wbc_cells`` on PBC crops plus BCCD white-cell crops, then evaluate it.

    python -m training.train_cells [--out artifacts/wbc_cells] [--epochs 12] [--resume]

Version 2.0 (the blast type) was trained, on a shared 2-core CPU, as

    python -m training.cell_weak          # weakly labelled all4 cells -> artifacts/all4_cells.pt
    python -m training.train_cells --init-weights <the 1.0 typer's model/ directory> \
        --weak artifacts/all4_cells.pt --weak-share 0.5 --degrade 0.5 --cross-stats 0.5 \
        --views 2 --cache-size 128 --epochs 30 --lr 3e-3 --head-only

``--weak`` adds those cells (source "all4", half of their draws blasts); ``--degrade`` shows PBC/BCCD
crops at the B-ALL frames' resolution (:class:`training.cell_weak.Degrade`) and ``--cross-stats``
swaps colour statistics between crops of every source and label (:class:`training.cell_weak.CrossStats`)
so that neither blur nor acquisition colour can mean blast; ``--head-only`` trains only the
classifier on the frozen network's pooled features (fine-tuning the tail ran at 10 images/s on the
loaded machine, 70 minutes for 10 epochs; the read-out took 5 minutes).

Data (fixed splits from :mod:`training.cell_data`): the PBC training images (the whole image is
the crop: PBC images are centred single-cell crops with their neighbourhood, as
:func:`training.cell_typer.crop_cell` makes for a detected box) and the BCCD training frames'
white cell (``frame.wbc_boxes[0]`` of frames with one type and one box, cropped by ``crop_cell``)
so the typer also sees the other lab's stain, camera and magnification.

Why it is built this way: the run must fit ~40 minutes on 2 CPU cores shared with other jobs, where
fine-tuning the whole MobileNetV2 at 128 px measured 3.5 images/s (about 15 minutes per epoch).

- **Frozen stem, cached features** (the project's "cached" recipe, as in :mod:`training.train`): the
  stem and ``blocks[0..freeze_through]`` (stride 16; 0.24 M of 2.2 M parameters, most of the FLOPs)
  keep the ImageNet-derived initialisation. Every crop is decoded once, resized to ``--cache-size``
  and passed through the stem in ``--views`` independently augmented views; the training epochs then
  run only the later blocks, the head convolution and the classifier on the cached maps (~200/s),
  with a random 90-degree rotation / flip of the map per draw
  (:func:`training.augment.geometric_grid`). The saved model is the whole network: evaluation and
  serving run it end to end on image crops.
- **Augmentation** of each cached view (:class:`training.augment.TrainAugment`): flips, 90-degree
  rotations (cells have no orientation), scale jitter (a random 70-100% crop), HED stain jitter, hue,
  saturation, brightness/contrast, white-balance gains and random grayscale (p 0.25), plus
  :class:`LabStatsJitter`, a Reinhard-style random change of the crop's L*a*b* statistics (a first
  run without it lost 0.053 PBC accuracy under the evaluation's Reinhard normalisation). Its range
  covers that perturbation's colour shift, so the "stain_normalized" result measures robustness
  to a shift of a kind seen in training, not an unseen one.
- **Sampling**: each epoch draws ``(1 + bccd_share) x len(PBC train)`` crops with replacement; PBC is
  balanced (same weight per image), BCCD gets ``bccd_share`` of the draws, spread over its classes
  in proportion to sqrt(count) (BCCD is mostly neutrophils; full balancing would repeat its two
  basophils hundreds of times).
- AdamW, cosine learning rate with warm-up, label smoothing 0.05; the last epoch's model is kept
  (no selection on the validation set it is measured on).
- The epochs run in :func:`training.loop.fit`, the loop every model's training uses: a checkpoint
  after every epoch (``checkpoint.pt``; with the feature cache ``feature_cache.pt``, ``--resume``
  continues from both), one JSON line per epoch in ``train.log``.

At the end the model is saved to ``<out>/model`` (:func:`training.cell_typer.save_typer`) and
:func:`training.cell_typer_eval.evaluate` fits the temperature and abstention threshold and writes
``typer_metrics.json`` and the confusion matrices.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from core.host import cpu_model
from core.paths import WEIGHTS
from core.registry import CELL_CLASSES, CellModelSpec, get_cell_spec
from served_model.cell_typer import CellTyper, build_typer_transform, crop_cell, save_typer
from served_model.stain import lab_to_rgb, rgb_to_lab
from training.augment import ColorAugment, GeometricAugment, TrainAugment, geometric_grid
from training.cell_data import bccd_split, pbc_split
from training.cell_typer import create_typer, typer_split
from training.cell_weak import CrossStats, Degrade, load_weak
from training.loop import Checkpoint, Log, Source, fit, macro_f1

__all__ = ["DEFAULT_INIT", "CropSet", "pbc_crops", "bccd_crops", "sample_weights", "train", "main"]

DEFAULT_INIT = WEIGHTS / "mobilenetv2_100.ft_dogbreeds19.pad_same.fp16.safetensors"
MODEL_NAME = "wbc_cells"


class CropSet:
    """Square cell crops with labels (indices into ``spec.classes``) and a source name per crop."""

    def __init__(self) -> None:
        self.images: list[Image.Image] = []
        self.labels: list[int] = []
        self.sources: list[str] = []
        self.names: list[str] = []

    def add(self, image: Image.Image, label: int, source: str, name: str) -> None:
        self.images.append(image)
        self.labels.append(label)
        self.sources.append(source)
        self.names.append(name)

    def __len__(self) -> int:
        return len(self.images)


def _resized(image: Image.Image, size: int | None) -> Image.Image:
    image = image.convert("RGB")
    if size is None or image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)


def pbc_crops(samples: Sequence[Any], size: int | None, out: CropSet | None = None) -> CropSet:
    """PBC images as crops (the whole image), resized to ``size`` (``None``: as stored)."""
    out = out if out is not None else CropSet()
    for s in samples:
        with Image.open(s.path) as im:
            if size is not None:
                im.draft("RGB", (size, size))  # JPEG DCT scaling: decode at >= size, much faster
            out.add(_resized(im, size), s.label, "pbc", s.path.name)
    return out


def bccd_crops(
    frames: Sequence[Any], spec: CellModelSpec, size: int | None, out: CropSet | None = None, perturb: Any = None
) -> CropSet:
    """The white cell of each single-type, single-box BCCD frame, cropped by ``crop_cell``.

    ``perturb`` (a PIL -> PIL function) is applied to the whole frame first, as a served frame
    would arrive.
    """
    out = out if out is not None else CropSet()
    for f in frames:
        if f.single_type is None:
            continue
        with Image.open(f.image) as im:
            frame = im.convert("RGB")
        if perturb is not None:
            frame = perturb(frame)
        crop = crop_cell(frame, f.wbc_boxes[0].as_list(), spec)
        out.add(_resized(crop, size), spec.classes.index(f.single_type), "bccd", f.name)
    return out


def sample_weights(crops: CropSet, bccd_share: float, weak_share: float = 0.0) -> np.ndarray:
    """Draw weights: PBC 1 per image; BCCD ``bccd_share`` x (PBC total), spread as sqrt(class count);
    the weakly labelled all4 cells ``weak_share`` x (PBC total), half to ``blast``, half to the rest."""
    src = np.array(crops.sources)
    labels = np.array(crops.labels)
    w = np.zeros(len(crops), dtype=np.float64)
    w[src == "pbc"] = 1.0
    n_pbc = int((src == "pbc").sum())
    bccd_counts = Counter(labels[src == "bccd"].tolist())
    if bccd_counts and bccd_share > 0:
        root = {c: math.sqrt(n) for c, n in bccd_counts.items()}
        total_root = sum(root.values())
        for c, n in bccd_counts.items():
            mass = bccd_share * n_pbc * root[c] / total_root
            w[(src == "bccd") & (labels == c)] = mass / n
    weak = src == "all4"
    if weak.any() and weak_share > 0:
        blast = weak & (labels == CELL_CLASSES.index("blast"))
        for group in (blast, weak & ~blast):
            if group.any():
                w[group] = 0.5 * weak_share * n_pbc / int(group.sum())
    return w / w.sum()


@dataclass
class LabStatsJitter:
    """A Reinhard-style stain change: the crop's L*a*b* per-channel mean and std moved to a random target.

    Another lab's stain and camera shift the whole crop's colour statistics (Reinhard normalisation
    is exactly such a map). The ranges were sized from measured statistics: BCCD frames differ
    from PBC crops by about (-7, -5, -8) in mean L*a*b* and the all4 Reinhard reference
    (:data:`served_model.stain.REINHARD_REFERENCE`) by about (+7, -8, -19), so both lie inside them.
    """

    p: float = 0.5
    mean_shift: tuple[float, float, float] = (12.0, 10.0, 22.0)
    std_scale: tuple[float, float] = (0.6, 1.4)

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        if rng.random() >= self.p:
            return image
        lab = rgb_to_lab(image)
        mean, std = lab.reshape(-1, 3).mean(axis=0), np.maximum(lab.reshape(-1, 3).std(axis=0), 1e-6)
        target_mean = mean + rng.uniform(-1.0, 1.0, size=3) * np.asarray(self.mean_shift)
        target_std = std * rng.uniform(*self.std_scale, size=3)
        return Image.fromarray(lab_to_rgb((lab - mean) / std * target_std + target_mean))


class _Views(Dataset):
    """Augmented views for the feature cache: item ``k`` is crop ``k % n`` in view ``k // n``."""

    def __init__(
        self,
        crops: CropSet,
        views: int,
        augment: TrainAugment,
        transform: Any,
        stain: LabStatsJitter | None = None,
        degrade: Degrade | None = None,
        cross: CrossStats | None = None,
    ) -> None:
        self.crops, self.views, self.augment, self.transform, self.stain = crops, views, augment, transform, stain
        self.degrade, self.cross = degrade, cross

    def __len__(self) -> int:
        return len(self.crops) * self.views

    def __getitem__(self, k: int) -> torch.Tensor:
        n = len(self.crops)
        image = self.crops.images[k % n]
        rng = np.random.default_rng([self.augment.seed, 2, k // n, k % n])
        if self.degrade is not None and self.crops.sources[k % n] != "all4":
            image = self.degrade(image, rng)
        crossed = False
        if self.cross is not None:
            image, crossed = self.cross.apply(image, rng)
        if self.stain is not None and not crossed:  # one Reinhard-style move per view is enough
            image = self.stain(image, np.random.default_rng([self.augment.seed, 1, k // n, k % n]))
        return self.transform(self.augment(image, k % n, k // n))


def _one_thread(_: int) -> None:
    """Augmentation workers use one thread: the stem's forward pass has the others."""
    torch.set_num_threads(1)


@torch.no_grad()
def cache_views(
    stem: torch.nn.Module,
    crops: CropSet,
    views: int,
    augment: TrainAugment,
    transform: Any,
    workers: int,
    log: Any,
    stain: LabStatsJitter | None = None,
    degrade: Degrade | None = None,
    cross: CrossStats | None = None,
) -> torch.Tensor:
    """Stem feature maps of ``views`` augmented views of every crop: (views, N, C, H, W) float16."""
    stem.eval()
    loader = DataLoader(
        _Views(crops, views, augment, transform, stain, degrade, cross),
        batch_size=64,
        num_workers=workers,
        worker_init_fn=_one_thread,
    )
    maps, t0, done = [], time.time(), 0
    for x in loader:
        maps.append(stem(x).half())
        done += len(x)
        if len(maps) % 20 == 0:
            log(f"  cached {done}/{len(crops) * views} views ({done / (time.time() - t0):.1f}/s)")
    out = torch.cat(maps)
    return out.view(views, len(crops), *out.shape[1:])


@torch.no_grad()
def _pooled_cache(
    path: Path,
    key: dict[str, Any],
    model: CellTyper,
    tail: torch.nn.Module,
    train_maps: torch.Tensor,
    val_maps: dict[str, torch.Tensor],
    log: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pooled features (the classifier's input) of the cached stem maps, computed once (``path`` keeps them)."""
    if path.is_file():
        saved = torch.load(path, weights_only=False)
        if saved["key"] == key:
            return saved["train"], saved["val"]
    model.eval()
    tail.eval()

    def pooled(maps: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [model.forward_head(tail(maps[i : i + 256].float()), pre_logits=True) for i in range(0, len(maps), 256)]
        )

    t0 = time.time()
    views, n = train_maps.shape[:2]
    train = pooled(train_maps.reshape(views * n, *train_maps.shape[2:])).reshape(views, n, -1)
    val = {k: pooled(v) for k, v in val_maps.items()}
    torch.save({"key": key, "train": train, "val": val}, path)
    log(f"pooled features {tuple(train.shape)} in {time.time() - t0:.0f}s -> {path}")
    return train, val


def train(args: argparse.Namespace) -> Path:
    """Cache stem features, train the tail, checkpoint every epoch; returns the saved model directory."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    spec = get_cell_spec(MODEL_NAME)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "train.log")

    t0 = time.time()
    model = create_typer(spec, args.init_weights)
    stem, tail = typer_split(model, args.freeze_through)
    for p in stem.parameters():
        p.requires_grad_(False)
    transform = build_typer_transform(spec)
    cache_path = out / "feature_cache.pt"
    key = {
        k: getattr(args, k)
        for k in (
            "views",
            "cache_size",
            "freeze_through",
            "seed",
            "limit",
            "init_weights",
            "lab_jitter",
            "p_gray",
            "weak",
            "degrade",
            "cross_stats",
        )
    }
    cache = torch.load(cache_path, weights_only=False) if args.resume and cache_path.is_file() else None
    if cache is not None and cache["key"] != key:
        log(f"feature cache {cache_path} was built with {cache['key']}, not {key}: rebuilding")
        cache = None
    if cache is None:
        pbc_train, pbc_val = pbc_split()
        bccd_train, bccd_val = bccd_split()
        if args.limit:
            cap = args.limit
            pbc_train = [s for c in range(spec.num_classes) for s in [x for x in pbc_train if x.label == c][:cap]]
            pbc_val = [s for c in range(spec.num_classes) for s in [x for x in pbc_val if x.label == c][:cap]]
            bccd_train, bccd_val = bccd_train[: cap * 4], bccd_val[: cap * 4]
        train_set = pbc_crops(pbc_train, args.cache_size)
        bccd_crops(bccd_train, spec, args.cache_size, out=train_set)
        weak_val = None
        if args.weak:
            weak_train = load_weak(Path(args.weak), "train", spec.classes)
            weak_val = load_weak(Path(args.weak), "val", spec.classes)
            for crop, label, frame in zip(weak_train.crops, weak_train.labels, weak_train.frames, strict=True):
                train_set.add(_resized(crop, args.cache_size), label, "all4", frame)
        counts = Counter(zip(train_set.sources, (spec.classes[i] for i in train_set.labels), strict=True))
        log(f"data: {len(train_set)} training crops {dict(sorted(counts.items()))}; decoded in {time.time() - t0:.0f}s")
        augment = TrainAugment(
            seed=args.seed,
            geometric=GeometricAugment(min_scale=0.7, p_crop=0.8),
            color=ColorAugment(p_gray=args.p_gray),
        )
        stain = LabStatsJitter(p=args.lab_jitter) if args.lab_jitter > 0 else None
        degrade = Degrade(p=args.degrade) if args.degrade > 0 else None
        # the colour pool: every 4th crop of every source (PBC, BCCD, all4 of every frame class)
        cross = CrossStats(train_set.images[::4], p=args.cross_stats) if args.cross_stats > 0 else None
        train_maps = cache_views(
            stem, train_set, args.views, augment, transform, args.workers, log, stain, degrade, cross
        )
        # validation: the clean crops exactly as evaluation / serving preprocess them (full decode, crop, resize)
        val_sets = {"pbc": pbc_crops(pbc_val, None), "bccd": bccd_crops(bccd_val, spec, None)}
        if weak_val is not None:
            val_sets["all4"] = CropSet()
            for crop, label, frame in zip(weak_val.crops, weak_val.labels, weak_val.frames, strict=True):
                val_sets["all4"].add(crop, label, "all4", frame)
        with torch.no_grad():
            val_maps = {
                k: torch.cat(
                    [stem(torch.stack([transform(im) for im in v.images[i : i + 64]])) for i in range(0, len(v), 64)]
                )
                for k, v in val_sets.items()
                if len(v)
            }
        cache = {
            "key": key,
            "train_maps": train_maps,
            "train_labels": torch.tensor(train_set.labels),
            "train_sources": list(train_set.sources),
            "val_maps": val_maps,
            "val_labels": {k: torch.tensor(v.labels) for k, v in val_sets.items() if len(v)},
        }
        torch.save(cache, cache_path)
        log(f"feature cache: {tuple(train_maps.shape)} in {time.time() - t0:.0f}s -> {cache_path}")
    train_maps, labels = cache["train_maps"], cache["train_labels"]
    crops = CropSet()
    crops.labels, crops.sources = labels.tolist(), cache["train_sources"]
    crops.images = [None] * len(crops.labels)  # type: ignore[list-item]
    weights = sample_weights(crops, args.bccd_share, args.weak_share if args.weak else 0.0)
    n_pbc = sum(1 for s in crops.sources if s == "pbc")
    n_weak = sum(1 for s in crops.sources if s == "all4")
    per_epoch = int(round(n_pbc * (1.0 + args.bccd_share + (args.weak_share if n_weak else 0.0))))
    steps_per_epoch = math.ceil(per_epoch / args.batch_size)

    val_maps = cache["val_maps"]
    if args.head_only:
        # Only the classifier trains, on the pooled features of the frozen network (cached once): the eight
        # normal types keep the saved typer's features exactly; the new class is a linear read-out of them.
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.net.classifier.parameters():
            p.requires_grad_(True)
        train_maps, val_maps = _pooled_cache(out / "pooled_cache.pt", key, model, tail, train_maps, val_maps, log)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    ckpt_path = out / "checkpoint.pt"
    if not args.resume:
        ckpt_path.unlink(missing_ok=True)  # a fresh run; --resume continues from it
    log(
        f"start: {args.epochs} epochs x {steps_per_epoch} steps (batch {args.batch_size}, {per_epoch} draws) on "
        f"cached stem maps (frozen through blocks[{args.freeze_through}], {args.views} views), input "
        f"{spec.input_size}px, trainable {sum(p.numel() for p in trainable)} params, init {model.init_info}, "
        f"threads {torch.get_num_threads()}"
    )

    def head(maps: torch.Tensor) -> torch.Tensor:
        if args.head_only:
            return model.net.classifier(maps.float())
        return model.forward_head(tail(maps.float()))

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Weighted draws (BCCD's share), each a random cached view under a random flip/90-degree turn."""
        gen = np.random.default_rng([args.seed, epoch])
        order = gen.choice(len(labels), size=per_epoch, replace=True, p=weights)
        view = gen.integers(0, train_maps.shape[0], size=per_epoch)
        rot = gen.integers(0, 4, size=per_epoch)
        flip = gen.random(per_epoch) < 0.5
        for b in range(steps_per_epoch):
            sl = slice(b * args.batch_size, (b + 1) * args.batch_size)
            x = torch.stack(
                [
                    train_maps[v, i] if args.head_only else geometric_grid(train_maps[v, i], int(k), bool(f))  # type: ignore[misc]
                    for i, v, k, f in zip(order[sl], view[sl], rot[sl], flip[sl], strict=True)
                ]
            )
            yield x, labels[order[sl]]

    tally = {"correct": 0, "seen": 0, "t0": time.time()}

    def loss(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch
        logits = head(x)
        tally["correct"] += int((logits.argmax(1) == y).sum())
        tally["seen"] += len(y)
        return F.cross_entropy(logits, y, label_smoothing=args.label_smoothing), len(y)

    def train_mode() -> None:
        if not args.head_only:  # head only: the frozen network's batch-norm statistics stay as saved
            tail.train()
        model.net.classifier.train()
        tally.update(correct=0, seen=0, t0=time.time())

    def epoch_numbers() -> dict[str, Any]:
        return {
            "train_acc": round(tally["correct"] / max(tally["seen"], 1), 4),
            "lr": round(optimizer.param_groups[0]["lr"], 6),
            "train_img_per_s": round(tally["seen"] / max(time.time() - tally["t0"], 1e-9), 1),
        }

    def validate(epoch: int, last: bool) -> dict[str, Any]:
        tail.eval()
        model.eval()
        rec: dict[str, Any] = {}
        with torch.no_grad():
            for k, maps in val_maps.items():
                val_logits = torch.cat([head(maps[i : i + 256]) for i in range(0, len(maps), 256)])
                acc, f1 = macro_f1(val_logits, cache["val_labels"][k], spec.num_classes)
                rec[f"val_{k}_acc"] = round(acc, 4)
                if k == "pbc":
                    rec["val_orig_macro_f1"] = round(f1, 4)
        return rec

    fit(
        model=model,
        opt=optimizer,
        source=Source(steps_per_epoch, batches),
        loss=loss,
        epochs=args.epochs,
        log=log,
        clip=[],  # the shipped typer was trained without gradient clipping
        train_mode=train_mode,
        validate=validate,
        checkpoint=Checkpoint(ckpt_path),
        warmup=args.warmup_steps,
        epoch_extra=epoch_numbers,
    )

    model.eval()
    model_dir = save_typer(
        model,
        out / "model",
        extra={
            "training": {
                "recipe": "classifier only, on the frozen network's pooled features of cached augmented views"
                if args.head_only
                else "cached stem features (frozen through blocks[freeze_through]), tail + head trained",
                "data": {
                    "pbc_train": n_pbc,
                    "bccd_train": len(labels) - n_pbc - n_weak,
                    "all4_weak_train": n_weak,
                    "all4_weak_train_by_label": dict(
                        Counter(spec.classes[int(y)] for y, s in zip(labels, crops.sources, strict=True) if s == "all4")
                    ),
                    "split": "training.cell_data.pbc_split / bccd_split (seeded); all4 by block (training.data)",
                },
                **{
                    k: getattr(args, k)
                    for k in (
                        "epochs",
                        "batch_size",
                        "lr",
                        "weight_decay",
                        "label_smoothing",
                        "bccd_share",
                        "weak",
                        "weak_share",
                        "degrade",
                        "cross_stats",
                        "cache_size",
                        "views",
                        "lab_jitter",
                        "p_gray",
                        "freeze_through",
                        "head_only",
                        "seed",
                        "limit",
                    )
                },
                "hardware": {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
                "wall_s": round(time.time() - t0, 1),
            }
        },
    )
    log(f"saved {model_dir} after {time.time() - t0:.0f}s")
    return model_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="artifacts/wbc_cells")
    p.add_argument("--init-weights", default=str(DEFAULT_INIT), help="'random', 'hub' or a timm safetensors file")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.02)
    p.add_argument("--warmup-steps", type=int, default=60)
    p.add_argument("--label-smoothing", type=float, default=0.05)
    p.add_argument("--bccd-share", type=float, default=0.2)
    p.add_argument("--weak", default="", help="weakly labelled all4 cells (python -m training.cell_weak); '': none")
    p.add_argument("--weak-share", type=float, default=0.5, help="all4 draws per epoch as a share of PBC's")
    p.add_argument("--degrade", type=float, default=0.5, help="probability a PBC/BCCD view is seen at all4 resolution")
    p.add_argument("--cross-stats", type=float, default=0.5, help="probability a view takes another crop's colour")
    p.add_argument("--cache-size", type=int, default=144)
    p.add_argument("--views", type=int, default=6, help="augmented views per crop in the feature cache")
    p.add_argument("--lab-jitter", type=float, default=0.5, help="probability of the L*a*b* stain jitter per view")
    p.add_argument("--p-gray", type=float, default=0.25, help="probability of a grayscale view")
    p.add_argument("--freeze-through", type=int, default=3, help="backbone blocks[0..N] (and the stem) frozen")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="augmentation worker processes (0: in the main process)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="per-class cap for a quick smoke run (0: all)")
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--head-only", action="store_true", help="train only the classifier on the frozen network's pooled features"
    )
    p.add_argument("--no-eval", action="store_true", help="skip evaluation after training")
    args = p.parse_args(argv)
    model_dir = train(args)
    if not args.no_eval:
        from training.cell_typer_eval import evaluate

        evaluate(model_dir, Path(args.out), threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
