"""Feature-map cache for frozen CNN stages.

For a frozen backbone (Xception from the shared ImageNet weights, or a trained CNN stage shared by
two models) the CNN's feature map of every image and colour view is computed once and stored as
fp16 ``.npy`` under ``artifacts/cache/<tag>/<split>_<view>.npy`` (N, C, H, W), with the sample
order in ``<split>_<view>.json``. The sequence stage and head then train on the cache, with flips
and 90-degree rotations applied to the grids (training.augment.geometric_grid).

Views: ``orig`` (the image), ``gray``/``stain``/``hue``/``wb`` (the fixed evaluation perturbations),
``color<k>`` (a random colour augmentation with seed k, per image).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from core.registry import ModelSpec
from served_model import compat  # noqa: F401  (before timm)
from served_model.transforms import build_eval_transform
from training.augment import PERTURBATIONS, ColorAugment
from training.data import Sample, load_split

__all__ = [
    "VIEW_PERTURBATION",
    "view_function",
    "cache_dir_for",
    "cache_path",
    "compute_cache",
    "load_cache",
    "map_batches",
    "main",
]

VIEW_PERTURBATION = {"gray": "grayscale", "stain": "stain_normalized", "hue": "hue_shift", "wb": "white_balance"}


def map_batches(maps: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    """Cached (read-only, fp16) feature maps as writable float32 tensors, ``batch_size`` at a time."""
    for i in range(0, len(maps), batch_size):
        yield torch.from_numpy(np.array(maps[i : i + batch_size], dtype=np.float32))


def view_function(view: str) -> Callable[[Image.Image, int], Image.Image]:
    """Image -> image for a named view (the int is the sample index, used by random views)."""
    if view == "orig":
        return lambda im, i: im
    if view in VIEW_PERTURBATION:
        fn = PERTURBATIONS[VIEW_PERTURBATION[view]]
        return lambda im, i: fn(im)
    if view.startswith("color"):
        k = int(view[5:])
        aug = ColorAugment()
        return lambda im, i: aug(im, np.random.default_rng([1000 + k, i]))
    raise KeyError(f"unknown view {view!r}")


def cache_dir_for(artifacts: Path, model: str, cnn_split: str | None) -> Path:
    """Where the cached maps of ``model``'s frozen stem live (one folder per cut point)."""
    return artifacts / "cache" / (f"{model}@{cnn_split}" if cnn_split else model)


def cache_path(cache_dir: Path, split: str, view: str) -> Path:
    return cache_dir / f"{split}_{view}.npy"


@torch.no_grad()
def compute_cache(
    forward_cnn: Callable[[torch.Tensor], torch.Tensor],
    spec: ModelSpec,
    samples: Sequence[Sample],
    view: str,
    out: Path,
    batch_size: int = 16,
    device: str = "cpu",
    desc: str = "",
) -> Path:
    """Write the fp16 feature maps of ``samples`` under ``view`` to ``out`` (skips if complete)."""
    meta_path = out.with_suffix(".json")
    if out.exists() and meta_path.exists():
        return out
    transform = build_eval_transform(spec)
    fn = view_function(view)
    tmp = out.with_suffix(".partial.npy")
    arr: np.ndarray | None = None
    t0 = time.time()
    for start in tqdm(range(0, len(samples), batch_size), desc=desc or out.name, mininterval=30, file=sys.stdout):
        batch = samples[start : start + batch_size]
        x = torch.stack([transform(fn(Image.open(s.path).convert("RGB"), start + j)) for j, s in enumerate(batch)])
        fmap = forward_cnn(x.to(device)).float().cpu().numpy().astype(np.float16)
        if arr is None:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(samples), *fmap.shape[1:]))
        arr[start : start + len(batch)] = fmap
    assert arr is not None
    arr.flush()  # type: ignore[attr-defined]
    del arr
    tmp.rename(out)
    meta = {"relpaths": [s.relpath for s in samples], "view": view, "seconds": round(time.time() - t0, 1)}
    meta_path.write_text(json.dumps(meta))
    return out


def load_cache(cache_dir: Path, split: str, view: str, samples: Sequence[Sample]) -> np.ndarray:
    """The cached maps for ``samples`` (checked against the stored order), memory-mapped."""
    path = cache_path(cache_dir, split, view)
    meta = json.loads(path.with_suffix(".json").read_text())
    if meta["relpaths"] != [s.relpath for s in samples]:
        raise ValueError(f"{path}: cached sample order does not match the split; delete the cache")
    return np.load(path, mmap_mode="r")


def main(argv: list[str] | None = None) -> int:
    from served_model.network import create_model

    p = argparse.ArgumentParser(description="Cache frozen-CNN feature maps for training and validation views.")
    p.add_argument("--model", default="xception_bigru")
    p.add_argument("--init-weights", required=True, help="backbone safetensors file (or a saved model dir)")
    p.add_argument("--data", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--jobs", default="train:orig,val:orig,train:gray,val:gray,train:color0,val:stain,val:hue,val:wb")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cut-after", default=None, help="cache the output after this backbone child (see cnn_split)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    init = Path(args.init_weights)
    if init.is_dir():
        from served_model.network import load_model

        model = load_model(init)
    else:
        model = create_model(args.model, init_weights=str(init))
    model = model.eval().to(args.device)
    spec = model.spec
    stem = model.cnn_split(args.cut_after)[0]
    cache_dir = Path(args.cache_dir) if args.cache_dir else cache_dir_for(Path("artifacts"), args.model, args.cut_after)
    cache_dir.mkdir(parents=True, exist_ok=True)
    split = load_split(args.data)
    for job in args.jobs.split(","):
        part, view = job.split(":")
        samples = split.train if part == "train" else split.val
        compute_cache(
            stem,
            spec,
            samples,
            view,
            cache_path(cache_dir, part, view),
            batch_size=args.batch_size,
            device=args.device,
            desc=job,
        )
        print(f"done {job}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
