"""Training images as tensors: an augmented dataset of frames and its shuffled epoch batches.

Shared by the end-to-end recipe (:mod:`training.train`) and the backbone pretraining
(:mod:`training.pretrain`), which both feed whole images through the model's eval transform.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from served_model.network import HybridClassifier
from served_model.transforms import build_eval_transform
from training.augment import TrainAugment
from training.data import Sample

__all__ = ["ImageDataset", "Labelled", "image_batches", "image_logits"]


class Labelled(Protocol):
    """An image file and its class index: a :class:`~training.data.Sample`, a lab frame
    (:class:`model_update.lab_data.Frame`)."""

    @property
    def path(self) -> Path: ...

    @property
    def label(self) -> int: ...


class ImageDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Augmented training images (seeded per sample and epoch) with optional soft targets."""

    def __init__(
        self, samples: Sequence[Labelled], model_spec: Any, augment: TrainAugment | None, soft: np.ndarray | None
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


def image_batches(
    ds: ImageDataset, batch_size: int, seed_base: int, workers: int = 0
) -> Callable[[int], Iterable[Any]]:
    """An epoch's shuffled, augmented batches of ``ds`` (shuffle seeded by ``seed_base + epoch``)."""

    def batches(epoch: int) -> Iterable[Any]:
        ds.epoch = epoch
        g = torch.Generator().manual_seed(seed_base + epoch)
        return torch.utils.data.DataLoader(
            ds, batch_size=batch_size, shuffle=True, generator=g, num_workers=workers, drop_last=len(ds) > batch_size
        )

    return batches
