"""Supervised domain pretraining of a frame model's CNN stage on cell-type folders (``--pretrain-data``).

No ImageNet weights exist offline for EfficientNet-B3 or MobileNetV3, so a random-init CNN stage can
first learn the cell types of the PBC single-cell set (``--pretrain-data pbc``: the same stain family,
other cells; Acevedo et al. 2020, CC BY 4.0) or any ``<root>/<type>/*.jpg`` folders. The backbone
plus a linear head on its pooled map train with the same augmentation and input transform (size,
luminance standardisation) as the main training, in :func:`training.loop.fit`.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.paths import PBC
from served_model.network import HybridClassifier
from training.augment import TrainAugment
from training.data import IMAGE_SUFFIXES, Sample
from training.image_data import ImageDataset, image_batches
from training.loop import Log, Source, fit

__all__ = ["pretrain_root", "pretrain_samples", "pretrain_backbone"]


def pretrain_root(data: str) -> Path:
    """``pbc`` -> the shared PBC folder (``$LEUKEMIA_SHARED``); anything else is a folder path."""
    return PBC if data == "pbc" else Path(data)


def pretrain_samples(root: str | os.PathLike[str]) -> list[Sample]:
    """Images under ``root/<type>/`` (any class folder names), labelled by folder, sorted."""
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
    log: Log,
    workers: int = 0,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Pretrain ``model``'s CNN stage on the cell types under ``root``; its weights go to ``out_file``.

    ``out_file`` (safetensors) then serves as ``--init-weights``; rerunning with it present reuses it.
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
    counts = {"correct": 0, "seen": 0}

    def loss(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y, _ = batch
        logits = head(model.forward_cnn(x.to(device)).mean((2, 3)))
        counts["correct"] += int((logits.argmax(1).cpu() == y).sum())
        counts["seen"] += len(y)
        return F.cross_entropy(logits, y.to(device)), len(y)

    def train_accuracy() -> dict[str, Any]:
        acc = counts["correct"] / max(1, counts["seen"])
        counts.update(correct=0, seen=0)
        return {"train_acc": round(acc, 4)}

    log(f"pretraining CNN stage on {len(samples)} images of {n_cls} types from {root}, {epochs} epochs")
    t_start = time.time()
    steps_per_epoch = math.ceil(len(ds) / batch_size)
    result = fit(
        model=backbone,
        opt=opt,
        source=Source(steps_per_epoch, image_batches(ds, batch_size, seed * 1000 + 500, workers)),
        loss=loss,
        epochs=epochs,
        log=log,
        clip=params,
        warmup=min(steps_per_epoch, 50),
        max_steps=max_steps,
        epoch_extra=train_accuracy,
    )
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}, str(out_file))
    return {"history": result["history"], "seconds": round(time.time() - t_start, 1), "n_images": len(samples)}
