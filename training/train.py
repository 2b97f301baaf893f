"""Training: ``python -m training.train --model NAME [...]`` (``make train MODEL=NAME``).

Two recipes, chosen per model by :data:`RECIPES` (overridable with ``--recipe``):

``cached`` (frozen CNN stage, e.g. xception_bigru from the shared ImageNet Xception weights):
    the CNN's feature maps of every training image under several colour views (original,
    grayscale, random colour augmentations: see training.features) are computed once; the token
    projection, sequence stage and head are trained on them, with random flips and 90-degree
    rotations of the feature grids as geometric augmentation. Fast on a CPU.

``end2end`` (random-init or hub-init CNNs): the whole model trains on augmented images
    (training.augment.TrainAugment: flips, rotations, crop jitter, HED / hue / saturation /
    brightness / white-balance / grayscale), optionally distilling from a teacher's soft labels
    (``--teacher artifacts/xception_bigru``; its soft labels are computed from its ``model/`` when
    ``teacher_train.npy`` is missing), time-boxed by ``--max-minutes``. ``--pretrain-data pbc`` first
    trains the CNN stage on cell-type folders (the PBC single-cell set: domain pretraining, since no
    ImageNet weights exist offline for these backbones). ``--workers N`` loads and augments in N
    processes: on a GPU the augmentation, not the model, is the bottleneck. Measured on an H100 (issue
    13): ~65 epochs instead of 13-39 on the 2-core CPU lifted validation macro-F1 by 0.02-0.09;
    distillation and PBC pretraining did not help beyond the run-to-run spread (~0.02).

Both: fixed seeds, a checkpoint after every epoch (``artifacts/<model>/checkpoint.pt``; rerunning
the same command resumes), a log line per epoch (``artifacts/<model>/train.log``), tqdm progress,
``--device cpu|cuda``. The fixed schedule is not selected on validation (the last epoch is kept),
so validation stays an honest estimate. The result is saved in fp16 with
``training.models.save_model`` to ``artifacts/<model>/model/`` plus ``train_info.json`` (recipe,
wall time, hardware) for the model card.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from core.host import cpu_model
from core.registry import get_spec
from training import compat  # noqa: F401  (before timm)
from training.augment import TrainAugment, geometric_grid
from training.data import Sample, Split, load_split, manifest_sha256
from training.features import cache_dir_for, cache_path, load_cache, map_batches
from training.models import HybridClassifier, create_model, load_backbone_weights, save_model
from training.transforms import build_eval_transform

__all__ = [
    "RECIPES",
    "hardware_info",
    "seed_everything",
    "train_cached",
    "train_end2end",
    "teacher_soft_labels",
    "pretrain_backbone",
    "main",
]

XCEPTION_WEIGHTS = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "weights"
    / "legacy_xception.keras_in1k.backbone.fp16.safetensors"
)

#: default recipe and initial weights per model
RECIPES: dict[str, dict[str, Any]] = {
    # ImageNet Xception: stem (up to block12) frozen and cached, conv3/conv4 fine-tuned with the head
    "xception_bigru": {
        "recipe": "cached",
        "init_weights": str(XCEPTION_WEIGHTS),
        "epochs": 12,
        "lr": 1e-3,
        "finetune_after": "block12",
        "views": "orig,color0",
    },
    "mobilenetv3_lstm": {"recipe": "end2end", "init_weights": "random", "epochs": 30, "lr": 3e-3},
    "effnetb3_bigru": {"recipe": "end2end", "init_weights": "random", "epochs": 30, "lr": 3e-3},
    # shares effnetb3_bigru's trained CNN stage (frozen): train effnetb3_bigru first
    "effnetb3_vit": {"recipe": "cached", "init_weights": "artifacts/effnetb3_bigru/model", "epochs": 12, "lr": 1e-3},
}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def hardware_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": device,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class _Log:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def _checkpoint_save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


@torch.no_grad()
def _macro_f1(logits: torch.Tensor, labels: torch.Tensor, n: int) -> tuple[float, float]:
    pred = logits.argmax(1)
    acc = float((pred == labels).float().mean())
    f1s = []
    for c in range(n):
        tp = float(((pred == c) & (labels == c)).sum())
        fp = float(((pred == c) & (labels != c)).sum())
        fn = float(((pred != c) & (labels == c)).sum())
        f1s.append(2 * tp / max(1.0, 2 * tp + fp + fn))
    return acc, float(np.mean(f1s))


# -- cached recipe ------------------------------------------------------------------------------
def _head_logits(model: HybridClassifier, fmap: torch.Tensor, tail: nn.Module | None = None) -> torch.Tensor:
    return model.forward_head(model.forward_sequence(tail(fmap) if tail is not None else fmap))


@torch.no_grad()
def cached_logits(
    model: HybridClassifier,
    maps: np.ndarray,
    device: str = "cpu",
    batch_size: int = 64,
    cnn_split: str | None = None,
) -> torch.Tensor:
    """Logits on cached CNN maps (N, C, H, W): the CNN tail after ``cnn_split`` (if any), sequence stage, head."""
    model.eval()
    tail = model.cnn_split(cnn_split)[1] if cnn_split else None
    out = []
    for x in map_batches(maps, batch_size):
        out.append(_head_logits(model, x.to(device), tail).float().cpu())
    return torch.cat(out)


def train_cached(
    model: HybridClassifier,
    split: Split,
    cache_dir: Path,
    views: Sequence[str],
    out_dir: Path,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str,
    log: _Log,
    weight_decay: float = 0.05,
    cnn_split: str | None = None,
    tail_lr_scale: float = 0.1,
) -> dict[str, Any]:
    """Train token projection + sequence stage + head on cached CNN maps of the training views.

    With ``cnn_split`` the maps are the CNN stem's (cut after that backbone child) and the CNN's
    remaining blocks are fine-tuned too, at ``tail_lr_scale`` times the learning rate.
    """
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    tail = model.cnn_split(cnn_split)[1] if cnn_split else None
    tail_params = list(tail.parameters()) if tail is not None else []
    for p in tail_params:
        p.requires_grad_(True)
    labels = torch.tensor([s.label for s in split.train])
    arrays = []
    for v in views:
        if not cache_path(cache_dir, "train", v).exists():
            log(f"view {v} not cached, skipped")
            continue
        arrays.append(torch.from_numpy(np.array(load_cache(cache_dir, "train", v, split.train))))
    if not arrays:
        raise FileNotFoundError(f"no cached training views in {cache_dir}; run python -m training.features first")
    used_views = [v for v in views if cache_path(cache_dir, "train", v).exists()]
    n = len(split.train)
    val_maps = {
        v: load_cache(cache_dir, "val", v, split.val)
        for v in ("orig", "gray")
        if cache_path(cache_dir, "val", v).exists()
    }
    val_labels = torch.tensor([s.label for s in split.val])
    params = model.sequence_parameters() + tail_params
    groups = [{"params": model.sequence_parameters(), "base_lr": lr}]
    if tail_params:
        groups.append({"params": tail_params, "base_lr": lr * tail_lr_scale})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(n * len(arrays) / batch_size)
    total = steps_per_epoch * epochs
    ckpt = out_dir / "checkpoint.pt"
    start_epoch = 0
    elapsed_before = 0.0
    history: list[dict[str, Any]] = []
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start_epoch = state["epoch"] + 1
        history = list(state.get("history", []))
        # checkpoints written before elapsed time was stored: the epochs' own times
        elapsed_before = float(state.get("elapsed", sum(h.get("seconds", 0.0) for h in history)))
        log(f"resumed from {ckpt} at epoch {start_epoch}")
    t_start = time.time()
    model.to(device)
    for epoch in range(start_epoch, epochs):
        model.train()
        model.backbone.eval()
        if tail is not None:
            tail.train()  # its batch-norm statistics adapt too
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(n * len(arrays), generator=g)
        t0, tot_loss, seen = time.time(), 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", mininterval=20, file=sys.stdout)
        for step in bar:
            idx = order[step * batch_size : (step + 1) * batch_size]
            view_idx, sample_idx = idx // n, idx % n
            x = torch.stack([arrays[int(v)][int(s)] for v, s in zip(view_idx, sample_idx, strict=True)]).float()
            k = int(torch.randint(0, 4, (1,), generator=g))
            flip = bool(torch.randint(0, 2, (1,), generator=g))
            x = geometric_grid(x, k, flip)  # type: ignore[assignment]
            y = labels[sample_idx]
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * _cosine(epoch * steps_per_epoch + step, total, steps_per_epoch)
            logits = _head_logits(model, x.to(device), tail)  # type: ignore[arg-type]
            loss = F.cross_entropy(logits, y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            tot_loss += float(loss.detach()) * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{tot_loss / seen:.4f}")
        rec: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": round(tot_loss / seen, 5),
            "seconds": round(time.time() - t0, 1),
        }
        for v, maps in val_maps.items():
            acc, f1 = _macro_f1(cached_logits(model, maps, device, cnn_split=cnn_split), val_labels, model.num_classes)
            rec[f"val_{v}_acc"], rec[f"val_{v}_macro_f1"] = round(acc, 4), round(f1, 4)
        history.append(rec)
        log(json.dumps(rec))
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "history": history}
        _checkpoint_save(ckpt, state | {"elapsed": elapsed_before + time.time() - t_start})
    return {"views": used_views, "history": history, "elapsed": elapsed_before + time.time() - t_start}


# -- end-to-end recipe --------------------------------------------------------------------------
class ImageDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Augmented training images (seeded per sample and epoch) with optional soft targets."""

    def __init__(
        self, samples: Sequence[Sample], model_spec: Any, augment: TrainAugment | None, soft: np.ndarray | None
    ):
        self.samples = list(samples)
        self.transform = build_eval_transform(model_spec)
        self.size = model_spec.input_size
        self.augment = augment
        self.soft = soft
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        s = self.samples[i]
        im = Image.open(s.path).convert("RGB")
        if self.augment is not None:
            im = self.augment(im, i, self.epoch)
        soft = torch.from_numpy(self.soft[i]).float() if self.soft is not None else torch.zeros(0)
        return self.transform(im), s.label, soft


@torch.no_grad()
def image_logits(model: HybridClassifier, samples: Sequence[Sample], device: str, batch_size: int = 32) -> torch.Tensor:
    ds = ImageDataset(samples, model.spec, None, None)
    model.eval()
    out = []
    for i in range(0, len(ds), batch_size):
        x = torch.stack([ds[j][0] for j in range(i, min(len(ds), i + batch_size))]).to(device)
        out.append(model(x).float().cpu())
    return torch.cat(out)


def train_end2end(
    model: HybridClassifier,
    split: Split,
    out_dir: Path,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str,
    log: _Log,
    max_minutes: float | None = None,
    teacher_soft: np.ndarray | None = None,
    kd_weight: float = 0.5,
    kd_temperature: float = 2.0,
    max_steps: int | None = None,
    workers: int = 0,
    validate: bool = True,
    val_every: int = 1,
) -> dict[str, Any]:
    """Train the whole model on augmented images; optional distillation from teacher probabilities."""
    ds = ImageDataset(split.train, model.spec, TrainAugment(seed=seed), teacher_soft)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(ds) / batch_size)
    total = steps_per_epoch * epochs
    ckpt = out_dir / "checkpoint.pt"
    start_epoch, elapsed_before = 0, 0.0
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start_epoch, elapsed_before = state["epoch"] + 1, float(state.get("elapsed", 0.0))
        log(f"resumed from {ckpt} at epoch {start_epoch}")
    model.to(device)
    t_start = time.time()
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    stop = False
    for epoch in range(start_epoch, epochs):
        ds.epoch = epoch
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=batch_size, shuffle=True, generator=g, num_workers=workers, drop_last=len(ds) > batch_size
        )
        model.train()
        t0, tot, seen = time.time(), 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", mininterval=20, file=sys.stdout)
        for step, (x, y, soft) in enumerate(bar):
            global_step = epoch * steps_per_epoch + step
            warmup = min(steps_per_epoch, 50)
            factor = _cosine(global_step, total, warmup)
            if max_minutes is not None and global_step >= warmup:
                # with a time box the schedule anneals by whichever ends first: steps or time
                done = max(global_step / total, (elapsed_before + time.time() - t_start) / (60 * max_minutes))
                factor = 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
            for group in opt.param_groups:
                group["lr"] = lr * factor
            logits = model(x.to(device))
            loss = F.cross_entropy(logits, y.to(device))
            if teacher_soft is not None and soft.numel():
                kd = F.kl_div(F.log_softmax(logits / kd_temperature, 1), soft.to(device), reduction="batchmean") * (
                    kd_temperature**2
                )
                loss = (1 - kd_weight) * loss + kd_weight * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(float(loss.detach()))
            tot += float(loss.detach()) * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{tot / seen:.4f}")
            if max_steps is not None and len(losses) >= max_steps:
                stop = True
                break
            if max_minutes is not None and (elapsed_before + time.time() - t_start) / 60 > max_minutes:
                stop = True
                log(f"time box of {max_minutes} min reached in epoch {epoch + 1}")
                break
        rec: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": round(tot / max(seen, 1), 5),
            "seconds": round(time.time() - t0, 1),
        }
        if validate and ((epoch + 1) % max(1, val_every) == 0 or stop or epoch + 1 == epochs):
            acc, f1 = _macro_f1(
                image_logits(model, split.val, device), torch.tensor([s.label for s in split.val]), model.num_classes
            )
            rec["val_orig_acc"], rec["val_orig_macro_f1"] = round(acc, 4), round(f1, 4)
        history.append(rec)
        log(json.dumps(rec))
        _checkpoint_save(
            ckpt,
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "epoch": epoch,
                "elapsed": elapsed_before + time.time() - t_start,
            },
        )
        if stop:
            break
    return {"history": history, "step_losses": losses, "elapsed": elapsed_before + time.time() - t_start}


# -- teacher soft labels --------------------------------------------------------------------------
TEACHER_FILE = "teacher_train.npy"


def teacher_soft_labels(
    teacher: str | os.PathLike[str],
    split: Split,
    device: str = "cpu",
    temperature: float = 2.0,
    log: _Log | None = None,
) -> np.ndarray:
    """Soft labels (softmax at ``temperature``) of the training split, in ``split.train`` order.

    ``teacher`` is a ``.npy`` file, or a teacher's artifacts directory: its ``teacher_train.npy``
    (written by the cached recipe) is used, else it is computed from the directory's ``model/``
    (e.g. ``model/`` unpacked from the teacher's .mar) on the images and written there.
    """
    path = Path(teacher)
    if path.suffix == ".npy":
        return np.load(path)
    if (path / TEACHER_FILE).exists():
        return np.load(path / TEACHER_FILE)
    from training.models import load_model

    model_dir = path / "model" if (path / "model").is_dir() else path
    tmodel = load_model(model_dir).to(device)
    if log is not None:
        log(f"teacher soft labels from {model_dir} on {len(split.train)} training images (T={temperature})")
    logits = image_logits(tmodel, split.train, device)
    soft = torch.softmax(logits / temperature, dim=1).numpy().astype(np.float32)
    np.save(path / TEACHER_FILE, soft)
    return soft


# -- domain pretraining of the CNN stage ----------------------------------------------------------
#: PBC single-cell crops (8 types, CC BY 4.0, Acevedo et al. 2020): the same stain family, other cells
PBC_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "pbc"
PBC_CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")


def pretrain_samples(root: str | os.PathLike[str]) -> list[Sample]:
    """Images under ``root/<type>/`` (any class folder names), labelled by folder, sorted."""
    from training.data import IMAGE_SUFFIXES

    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class folders under {root}")
    out = []
    for label, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                out.append(Sample(f, f"{c}/{f.name}", label, f"{c}/{f.name}", ""))
    return out


def pretrain_backbone(
    model: HybridClassifier,
    root: str | os.PathLike[str],
    out_file: Path,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str,
    log: _Log,
    workers: int = 0,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Supervised domain pretraining of the CNN stage on cell-type folders (e.g. PBC).

    The backbone plus a linear head on its pooled map learn the cell types with the same
    augmentation and the same input transform (size, luminance standardisation) as the main
    training; the backbone weights are written to ``out_file`` (safetensors), which then serves
    as ``--init-weights``. Rerunning with ``out_file`` present reuses it.
    """
    from safetensors.torch import save_file

    if out_file.exists():
        log(f"pretrained CNN stage {out_file} exists, reused")
        return {"reused": True}
    samples = pretrain_samples(root)
    n_cls = 1 + max(s.label for s in samples)
    ds = ImageDataset(samples, model.spec, TrainAugment(seed=seed + 7919), None)
    backbone = model.backbone.to(device)
    with torch.no_grad():
        size = model.spec.input_size
        ch = model.forward_cnn(torch.zeros(1, 3, size, size, device=device)).shape[1]
    head = nn.Linear(ch, n_cls).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(ds) / batch_size)
    total, t_start, steps = steps_per_epoch * epochs, time.time(), 0
    history = []
    log(f"pretraining CNN stage on {len(samples)} images of {n_cls} types from {root}, {epochs} epochs")
    for epoch in range(epochs):
        ds.epoch = epoch
        g = torch.Generator().manual_seed(seed * 1000 + 500 + epoch)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=batch_size, shuffle=True, generator=g, num_workers=workers, drop_last=len(ds) > batch_size
        )
        backbone.train()
        tot, correct, seen = 0.0, 0, 0
        for step, (x, y, _) in enumerate(loader):
            for group in opt.param_groups:
                group["lr"] = lr * _cosine(epoch * steps_per_epoch + step, total, min(steps_per_epoch, 50))
            logits = head(model.forward_cnn(x.to(device)).mean((2, 3)))
            loss = F.cross_entropy(logits, y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            tot += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1).cpu() == y).sum())
            seen += len(y)
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        rec = {"pretrain_epoch": epoch + 1, "loss": round(tot / seen, 5), "train_acc": round(correct / seen, 4)}
        history.append(rec)
        log(json.dumps(rec))
        if max_steps is not None and steps >= max_steps:
            break
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}, str(out_file))
    return {"history": history, "seconds": round(time.time() - t_start, 1), "n_images": len(samples)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train one registered model.")
    p.add_argument("--model", required=True)
    p.add_argument("--recipe", choices=("cached", "end2end"), default=None)
    p.add_argument("--init-weights", default=None, help="'random', 'hub', or a backbone safetensors file")
    p.add_argument("--data", default=None, help="class-folder data root (default ../shared/data/all4/original)")
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--views", default=None, help="cached recipe: training views (see training.features)")
    p.add_argument(
        "--finetune-after",
        default=None,
        help="cached recipe: cache the CNN up to this backbone child, fine-tune the blocks after it ('none': frozen)",
    )
    p.add_argument("--max-minutes", type=float, default=None, help="end2end: time box")
    p.add_argument(
        "--teacher",
        default=None,
        help="end2end: teacher soft labels: a .npy, or a teacher artifacts dir (teacher_train.npy, else its model/)",
    )
    p.add_argument("--kd-weight", type=float, default=0.5, help="end2end: weight of the distillation loss")
    p.add_argument(
        "--pretrain-data",
        default=None,
        help="end2end: pretrain the CNN stage on cell-type folders first ('pbc': ../shared/data/pbc)",
    )
    p.add_argument("--pretrain-epochs", type=int, default=30)
    p.add_argument("--val-every", type=int, default=1, help="end2end: validate every N epochs (and the last)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--note", default=None, help="free text recorded in train_info.json and the model card")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    defaults = RECIPES.get(args.model, {"recipe": "end2end", "init_weights": "random", "epochs": 30, "lr": 2e-3})
    recipe = args.recipe or defaults["recipe"]
    init = args.init_weights or defaults["init_weights"]
    epochs = args.epochs or defaults["epochs"]
    lr = args.lr or defaults["lr"]
    views = args.views or defaults.get("views", "orig,color0")
    cnn_split = args.finetune_after or defaults.get("finetune_after")
    cnn_split = None if cnn_split in (None, "none") else cnn_split
    get_spec(args.model)
    out_dir = Path(args.artifacts) / args.model
    out_dir.mkdir(parents=True, exist_ok=True)
    log = _Log(out_dir / "train.log")
    if init not in ("random", "hub") and Path(init).is_dir():
        # a trained model's directory: its CNN stage becomes this model's (shared) initial backbone
        from safetensors.torch import save_file

        from training.models import load_model

        shared = load_model(init)
        init_file = out_dir / "init_backbone.safetensors"
        save_file({k: v.contiguous() for k, v in shared.backbone.state_dict().items()}, str(init_file))
        log(f"CNN stage taken from {init} -> {init_file}")
        init = str(init_file)
    split = load_split(args.data)
    log(
        f"model={args.model} recipe={recipe} init={init} device={args.device} "
        f"train={len(split.train)} val={len(split.val)}"
    )
    model = create_model(args.model, init_weights=init)
    t0 = time.time()
    pretrain_info: dict[str, Any] | None = None
    if args.pretrain_data and recipe == "end2end":
        root = PBC_ROOT if args.pretrain_data == "pbc" else Path(args.pretrain_data)
        pre_file = out_dir / "pretrain_backbone.safetensors"
        pretrain_info = pretrain_backbone(
            model,
            root,
            pre_file,
            args.pretrain_epochs,
            lr,
            args.batch_size,
            args.seed,
            args.device,
            log,
            workers=args.workers,
        )
        pretrain_info["data"] = root.name
        load_backbone_weights(model, pre_file)
        model.init_info["pretrained_on"] = root.name
        init = f"{root.name}-pretrained ({init})"
    if recipe == "cached":
        cache_dir = cache_dir_for(Path(args.artifacts), args.model, cnn_split)
        from training.features import main as cache_main

        # computes only what is missing (a finished view is skipped)
        jobs = ",".join(["train:orig", "val:orig", *(f"train:{v}" for v in views.split(",") if v != "orig")])
        cache_main(
            ["--model", args.model, "--init-weights", str(init), "--cache-dir", str(cache_dir), "--jobs", jobs]
            + ["--threads", str(args.threads), "--device", args.device]
            + (["--cut-after", cnn_split] if cnn_split else [])
            + (["--data", args.data] if args.data else [])
        )
        result = train_cached(
            model,
            split,
            cache_dir,
            views.split(","),
            out_dir,
            epochs,
            lr,
            args.batch_size,
            args.seed,
            args.device,
            log,
            cnn_split=cnn_split,
        )
        cache_seconds = 0.0
        for f in cache_dir.glob("*.json"):
            cache_seconds += float(json.loads(f.read_text()).get("seconds", 0.0))
        frozen = (
            f"CNN stage up to {cnn_split} frozen, blocks after it fine-tuned at 0.1x lr"
            if cnn_split
            else ("frozen CNN stage")
        )
        recipe_text = (
            f"{frozen} (weights {Path(init).name}); feature maps cached for training views "
            f"{', '.join(result['views'])}; token projection + {model.spec.sequence.kind} + head trained "
            f"{epochs} epochs "
            f"on the cache with random grid flips/90-degree rotations, AdamW lr {lr}, wd 0.05, cosine, batch "
            f"{args.batch_size}, seed {args.seed}; last epoch kept (no selection on validation)"
        )
    else:
        soft = None
        if args.teacher:
            soft = teacher_soft_labels(args.teacher, split, args.device, log=log)
            if len(soft) != len(split.train):
                raise ValueError("teacher soft labels do not match the training split")
        result = train_end2end(
            model,
            split,
            out_dir,
            epochs,
            lr,
            args.batch_size,
            args.seed,
            args.device,
            log,
            max_minutes=args.max_minutes,
            teacher_soft=soft,
            kd_weight=args.kd_weight,
            workers=args.workers,
            val_every=args.val_every,
        )
        cache_seconds = 0.0
        recipe_text = (
            f"end to end from {init} init at {model.spec.input_size}px with flips, rotations, crop jitter, HED/hue/"
            f"saturation/brightness/white-balance/grayscale augmentation, AdamW lr {lr}, cosine, "
            f"batch {args.batch_size}, "
            f"seed {args.seed}, up to {epochs} epochs, time box {args.max_minutes} min"
            + (
                f", distilled from {Path(args.teacher).name} soft labels (T=2, weight {args.kd_weight})"
                if args.teacher
                else ""
            )
            + (
                f"; CNN stage first pretrained {args.pretrain_epochs} epochs on {pretrain_info['data']} cell types"
                if pretrain_info
                else ""
            )
        )
    wall = time.time() - t0
    model.eval().cpu()
    if recipe == "cached":
        # soft labels for distillation into the other models (temperature 2)
        maps = load_cache(cache_dir_for(Path(args.artifacts), args.model, cnn_split), "train", "orig", split.train)
        soft = torch.softmax(cached_logits(model, maps, cnn_split=cnn_split) / 2.0, dim=1).numpy().astype(np.float32)
        np.save(out_dir / "teacher_train.npy", soft)
    save_model(model, out_dir / "model", dtype=torch.float16)
    info_path = out_dir / "train_info.json"
    info = {
        "model": args.model,
        "recipe": recipe_text,
        "recipe_kind": recipe,
        "cnn_split": cnn_split if recipe == "cached" else None,
        "init_weights": model.init_info,
        "data_root": str(args.data or "../shared/data/all4/original"),
        "manifest_sha256": manifest_sha256(args.data),
        "split_rule": split.rule(),
        "n_train": len(split.train),
        "n_val": len(split.val),
        "history": result["history"],
        "wall_time_s": round(float(result.get("elapsed", wall)), 1),
        "cache_time_s": round(cache_seconds, 1),
        "hardware": hardware_info(args.device),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if pretrain_info:
        info["pretrain"] = pretrain_info
    if args.note:
        info["notes"] = args.note
    info_path.write_text(json.dumps(info, indent=2))
    log(f"saved {out_dir / 'model'} (fp16); wall {wall:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
