"""The one training loop every recipe uses, with its data source plugged in.

A recipe (:mod:`training.train`'s cached and end-to-end recipes, :mod:`training.pretrain`, the cell
typer in :mod:`training.train_cells`) says *what* to train: the optimiser's parameter groups, the
batches of an epoch (:class:`Source`), the loss of a batch, the model's train/eval modes, the
validation. :func:`fit` does the rest the same way for all of them:

- learning rate per step = each group's ``base_lr`` x the schedule factor (warm-up then cosine; with
  a time box, annealed by whichever ends first, steps or time);
- gradient clipping, per-step and per-epoch losses, a log line per epoch (:class:`Log`), tqdm;
- a checkpoint after every epoch (:class:`Checkpoint`: model, optimiser, epoch, history, elapsed
  time) from which rerunning the same command resumes;
- stopping at ``max_steps`` or at the time box (the epoch is finished with what it did).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from core.host import cpu_model

__all__ = [
    "Log",
    "Checkpoint",
    "Source",
    "cosine",
    "macro_f1",
    "fit",
    "seed_everything",
    "hardware_info",
]


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


class Log:
    """Timestamped progress lines to stdout and to a log file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


class Checkpoint:
    """``checkpoint.pt``: written atomically after every epoch, read back to resume."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def resume(self, model: nn.Module, opt: torch.optim.Optimizer, log: Log) -> tuple[int, list[dict[str, Any]], float]:
        """(first epoch to run, history so far, seconds spent so far); (0, [], 0.0) without a checkpoint."""
        if not self.path.exists():
            return 0, [], 0.0
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        history = list(state.get("history", []))
        # checkpoints written before elapsed time was stored: the epochs' own times
        elapsed = float(state.get("elapsed", sum(h.get("seconds", 0.0) for h in history)))
        log(f"resumed from {self.path} at epoch {state['epoch'] + 1}")
        return state["epoch"] + 1, history, elapsed

    def save(
        self, model: nn.Module, opt: torch.optim.Optimizer, epoch: int, history: list[dict[str, Any]], elapsed: float
    ) -> None:
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "history": history}
        tmp = self.path.with_suffix(".tmp")
        torch.save(state | {"elapsed": elapsed}, tmp)
        tmp.replace(self.path)


def cosine(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


@torch.no_grad()
def macro_f1(logits: torch.Tensor, labels: torch.Tensor, n: int) -> tuple[float, float]:
    """(accuracy, macro-F1 over ``n`` classes) of argmax predictions."""
    pred = logits.argmax(1)
    acc = float((pred == labels).float().mean())
    f1s = []
    for c in range(n):
        tp = float(((pred == c) & (labels == c)).sum())
        fp = float(((pred == c) & (labels != c)).sum())
        fn = float(((pred != c) & (labels == c)).sum())
        f1s.append(2 * tp / max(1.0, 2 * tp + fp + fn))
    return acc, float(np.mean(f1s))


@dataclass
class Source:
    """The data side of a recipe: how many steps an epoch has, and the epoch's batches.

    ``batches(epoch)`` returns an iterable of batches (any objects; ``loss`` reads them) and seeds
    whatever randomness it uses from the epoch, so a resumed run sees the batches it would have seen.
    """

    steps_per_epoch: int
    batches: Callable[[int], Iterable[Any]]


def fit(
    *,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    source: Source,
    loss: Callable[[Any], tuple[torch.Tensor, int]],
    epochs: int,
    log: Log,
    clip: Sequence[nn.Parameter],
    train_mode: Callable[[], None] | None = None,
    validate: Callable[[int, bool], dict[str, Any]] | None = None,
    checkpoint: Checkpoint | None = None,
    warmup: int | None = None,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    epoch_extra: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train ``epochs`` epochs (resuming from ``checkpoint``); returns history, step losses, elapsed seconds.

    ``loss(batch)`` runs the forward pass and returns (loss, batch size). ``validate(epoch_index,
    stopped)`` returns metrics to add to the epoch's record (or ``{}`` to skip). ``warmup`` defaults
    to one epoch of steps. ``epoch_extra()`` adds recipe-specific numbers to each record.
    """
    for group in opt.param_groups:
        group.setdefault("base_lr", group["lr"])
    steps_per_epoch = source.steps_per_epoch
    total = steps_per_epoch * epochs
    warmup = steps_per_epoch if warmup is None else warmup
    start_epoch, history, elapsed_before = checkpoint.resume(model, opt, log) if checkpoint else (0, [], 0.0)
    t_start = time.time()
    losses: list[float] = []
    for epoch in range(start_epoch, epochs):
        if train_mode is not None:
            train_mode()
        else:
            model.train()
        t0, tot, seen, stop = time.time(), 0.0, 0, False
        bar = tqdm(
            source.batches(epoch),
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{epochs}",
            mininterval=20,
            file=sys.stdout,
        )
        for step, batch in enumerate(bar):
            global_step = epoch * steps_per_epoch + step
            factor = cosine(global_step, total, warmup)
            if max_minutes is not None and global_step >= warmup:
                # with a time box the schedule anneals by whichever ends first: steps or time
                done = max(global_step / total, (elapsed_before + time.time() - t_start) / (60 * max_minutes))
                factor = 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor
            value, n = loss(batch)
            opt.zero_grad(set_to_none=True)
            value.backward()
            nn.utils.clip_grad_norm_(clip, 5.0)
            opt.step()
            losses.append(float(value.detach()))
            tot += losses[-1] * n
            seen += n
            bar.set_postfix(loss=f"{tot / seen:.4f}")
            if max_steps is not None and len(losses) >= max_steps:
                stop = True
                break
            if max_minutes is not None and (elapsed_before + time.time() - t_start) / 60 > max_minutes:
                stop = True
                log(f"time box of {max_minutes} min reached in epoch {epoch + 1}")
                break
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": round(tot / max(seen, 1), 5),
            "seconds": round(time.time() - t0, 1),
        }
        if epoch_extra is not None:
            record.update(epoch_extra())
        if validate is not None:
            record.update(validate(epoch, stop or epoch + 1 == epochs))
        history.append(record)
        log(json.dumps(record))
        if checkpoint is not None:
            checkpoint.save(model, opt, epoch, history, elapsed_before + time.time() - t_start)
        if stop:
            break
    return {"history": history, "step_losses": losses, "elapsed": elapsed_before + time.time() - t_start}
