"""Training: ``python -m training.train --model NAME [...]`` (``make train MODEL=NAME``).

Two kinds of recipe; each model's recipe and its numbers are :data:`training.recipes.RECIPES`
(every field can be overridden on the command line):

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
``served_model.network.save_model`` to ``artifacts/<model>/model/`` plus ``train_info.json`` (recipe,
wall time, hardware) for the model card.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.registry import get_spec
from served_model import compat  # noqa: F401  (before timm)
from served_model.network import HybridClassifier, create_model, load_backbone_weights, save_model
from training.augment import TrainAugment, geometric_grid
from training.data import DEFAULT_DATA_ROOT, Split, load_split, manifest_sha256
from training.features import cache_dir_for, cache_path, load_cache, map_batches
from training.image_data import ImageDataset, image_batches, image_logits
from training.loop import Checkpoint, Log, Source, fit, hardware_info, macro_f1, seed_everything
from training.recipes import describe, recipe_for

__all__ = [
    "ImageDataset",
    "image_batches",
    "train_cached",
    "train_end2end",
    "teacher_soft_labels",
    "main",
]


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
    log: Log,
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
    groups = [{"params": model.sequence_parameters(), "base_lr": lr}]
    if tail_params:
        groups.append({"params": tail_params, "base_lr": lr * tail_lr_scale})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(n * len(arrays), generator=g)
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            view_idx, sample_idx = idx // n, idx % n
            x = torch.stack([arrays[int(v)][int(s)] for v, s in zip(view_idx, sample_idx, strict=True)]).float()
            k = int(torch.randint(0, 4, (1,), generator=g))
            flip = bool(torch.randint(0, 2, (1,), generator=g))
            yield geometric_grid(x, k, flip), labels[sample_idx]  # type: ignore[misc]

    def loss(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch
        return F.cross_entropy(_head_logits(model, x.to(device), tail), y.to(device)), len(y)

    def train_mode() -> None:
        model.train()
        model.backbone.eval()
        if tail is not None:
            tail.train()  # its batch-norm statistics adapt too

    def validate(epoch: int, last: bool) -> dict[str, Any]:
        rec = {}
        for v, maps in val_maps.items():
            acc, f1 = macro_f1(cached_logits(model, maps, device, cnn_split=cnn_split), val_labels, model.num_classes)
            rec[f"val_{v}_acc"], rec[f"val_{v}_macro_f1"] = round(acc, 4), round(f1, 4)
        return rec

    steps_per_epoch = math.ceil(n * len(arrays) / batch_size)
    model.to(device)
    result = fit(
        model=model,
        opt=opt,
        source=Source(steps_per_epoch, batches),
        loss=loss,
        epochs=epochs,
        log=log,
        clip=model.sequence_parameters() + tail_params,
        train_mode=train_mode,
        validate=validate,
        checkpoint=Checkpoint(out_dir / "checkpoint.pt"),
    )
    return {"views": used_views, "history": result["history"], "elapsed": result["elapsed"]}


# -- end-to-end recipe --------------------------------------------------------------------------
def train_end2end(
    model: HybridClassifier,
    split: Split,
    out_dir: Path,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str,
    log: Log,
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
    val_labels = torch.tensor([s.label for s in split.val])

    def loss(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y, soft = batch
        logits = model(x.to(device))
        value = F.cross_entropy(logits, y.to(device))
        if teacher_soft is not None and soft.numel():
            kd = F.kl_div(F.log_softmax(logits / kd_temperature, 1), soft.to(device), reduction="batchmean") * (
                kd_temperature**2
            )
            value = (1 - kd_weight) * value + kd_weight * kd
        return value, len(y)

    def validate_every(epoch: int, last: bool) -> dict[str, Any]:
        if not ((epoch + 1) % max(1, val_every) == 0 or last):
            return {}
        acc, f1 = macro_f1(image_logits(model, split.val, device), val_labels, model.num_classes)
        return {"val_orig_acc": round(acc, 4), "val_orig_macro_f1": round(f1, 4)}

    model.to(device)
    steps_per_epoch = math.ceil(len(ds) / batch_size)
    return fit(
        model=model,
        opt=opt,
        source=Source(steps_per_epoch, image_batches(ds, batch_size, seed * 1000, workers)),
        loss=loss,
        epochs=epochs,
        log=log,
        clip=list(model.parameters()),
        validate=validate_every if validate else None,
        checkpoint=Checkpoint(out_dir / "checkpoint.pt"),
        warmup=min(steps_per_epoch, 50),
        max_steps=max_steps,
        max_minutes=max_minutes,
    )


# -- teacher soft labels --------------------------------------------------------------------------
TEACHER_FILE = "teacher_train.npy"


def teacher_soft_labels(
    teacher: str | os.PathLike[str],
    split: Split,
    device: str = "cpu",
    temperature: float = 2.0,
    log: Log | None = None,
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
    from served_model.network import load_model

    model_dir = path / "model" if (path / "model").is_dir() else path
    tmodel = load_model(model_dir).to(device)
    if log is not None:
        log(f"teacher soft labels from {model_dir} on {len(split.train)} training images (T={temperature})")
    logits = image_logits(tmodel, split.train, device)
    soft = torch.softmax(logits / temperature, dim=1).numpy().astype(np.float32)
    np.save(path / TEACHER_FILE, soft)
    return soft


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train one registered model.")
    p.add_argument("--model", required=True)
    p.add_argument("--recipe", choices=("cached", "end2end"), default=None)
    p.add_argument("--init-weights", default=None, help="'random', 'hub', or a backbone safetensors file")
    p.add_argument("--data", default=None, help="class-folder data root (default ../shared/data/all4/original)")
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
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
    p.add_argument("--pretrain-epochs", type=int, default=None)
    p.add_argument("--val-every", type=int, default=None, help="end2end: validate every N epochs (and the last)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--note", default=None, help="free text recorded in train_info.json and the model card")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    get_spec(args.model)
    # the model's recipe (training.recipes), any field overridden on the command line
    rc = recipe_for(
        args.model,
        kind=args.recipe,
        init_weights=args.init_weights,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        max_minutes=args.max_minutes,
        val_every=args.val_every,
        finetune_after=args.finetune_after,
        views=args.views,
        pretrain_data=args.pretrain_data,
        pretrain_epochs=args.pretrain_epochs,
    )
    if rc.finetune_after == "none":
        rc = replace(rc, finetune_after=None)
    seed_everything(rc.seed)
    recipe, init, epochs, lr, views, cnn_split = (
        rc.kind,
        rc.init_path(args.artifacts),
        rc.epochs,
        rc.lr,
        rc.views,
        rc.finetune_after,
    )
    get_spec(args.model)
    out_dir = Path(args.artifacts) / args.model
    out_dir.mkdir(parents=True, exist_ok=True)
    log = Log(out_dir / "train.log")
    if init not in ("random", "hub") and Path(init).is_dir():
        # a trained model's directory: its CNN stage becomes this model's (shared) initial backbone
        from safetensors.torch import save_file

        from served_model.network import load_model

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
    if rc.pretrain_data and recipe == "end2end":
        from training.pretrain import pretrain_backbone, pretrain_root

        root = pretrain_root(rc.pretrain_data)
        pre_file = out_dir / "pretrain_backbone.safetensors"
        pretrain_info = pretrain_backbone(
            model,
            root,
            pre_file,
            rc.pretrain_epochs,
            lr,
            rc.batch_size,
            rc.seed,
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
            rc.batch_size,
            rc.seed,
            args.device,
            log,
            cnn_split=cnn_split,
        )
        cache_seconds = 0.0
        for f in cache_dir.glob("*.json"):
            cache_seconds += float(json.loads(f.read_text()).get("seconds", 0.0))
        recipe_text = describe(
            rc,
            input_size=model.spec.input_size,
            sequence=model.spec.sequence.kind,
            init=init,
            views_used=result["views"],
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
            rc.batch_size,
            rc.seed,
            args.device,
            log,
            max_minutes=rc.max_minutes,
            teacher_soft=soft,
            kd_weight=args.kd_weight,
            workers=args.workers,
            val_every=rc.val_every,
        )
        cache_seconds = 0.0
        recipe_text = describe(
            rc,
            input_size=model.spec.input_size,
            sequence=model.spec.sequence.kind,
            init=init,
            teacher=args.teacher,
            kd_weight=args.kd_weight,
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
        "data_root": str(args.data or DEFAULT_DATA_ROOT),
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
