"""Normal smears from other labs and cameras as Benign evidence for a frame model's later stages (issue #30).

The B-ALL frames come from one lab and one camera: a normal smear photographed elsewhere is unlike every Benign
frame a model has seen, and the models answered such frames ALL. The developer data holds two such sources of
healthy donors' cells: the BCCD frames (640x480, another lab and camera) and the PBC single cells (a CellaVision
analyser), composed here into mosaic frames. Each source is split in two halves by a hash of the file name, so
that a normal frame is either trained on or measured on, never both:

- ``train`` half: :func:`training_frames` writes each image and ``views - 1`` randomly changed copies (scale,
  blur, gamma, stain, hue, white balance: :class:`SceneAugment`) as PNG files and returns them as Benign
  :class:`~model_update.lab_data.Frame`s for ``make retrain ... OTHER_BENIGN=<views>``;
- ``holdout`` half: :func:`holdout_sources` (BCCD frames, PBC mosaics, PBC single cells), on which
  ``python -m model_update.other_eval`` measures what the served version and a candidate answer, through
  the archive's own runtime (decoding, smear gate, out-of-distribution abstention, calibration, thresholds).

Platelet images are left out of the mosaics (a frame of platelets alone is not a normal smear); the single-cell
source keeps every type, platelets included.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from core.paths import BCCD, PBC
from core.registry import CLASS_NAMES
from model_update.lab_data import Frame
from training.augment import ColorAugment

__all__ = ["SceneAugment", "half", "training_frames", "holdout_sources"]

BENIGN = CLASS_NAMES.index("Benign")
_TILE = 240  # a PBC cell (360 px) shrunk so a mosaic frame holds 6 of them at 4:3, as a camera frame
_HOLDOUT_MOSAICS = 60
_HOLDOUT_CELLS_PER_TYPE = 20


def half(name: str) -> str:
    """``train`` or ``holdout``: a fixed half of a source, by a hash of the file's name."""
    return "train" if hashlib.sha1(name.encode()).digest()[0] % 2 == 0 else "holdout"


@dataclass
class SceneAugment:
    """Another microscope and camera: scale, focus, response curve, then stain and colour (:class:`ColorAugment`)."""

    zoom: tuple[float, float] = (0.5, 2.0)
    p_blur: float = 0.5
    blur_radius: tuple[float, float] = (0.5, 2.5)
    gamma: tuple[float, float] = (0.6, 1.6)
    color: ColorAugment = field(default_factory=lambda: ColorAugment(p_gray=0.0))

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        image = image.convert("RGB")
        w, h = image.size
        z = float(np.exp(rng.uniform(np.log(self.zoom[0]), np.log(self.zoom[1]))))
        if z > 1.0:  # magnify: the centre 1/z of the field
            cw, ch = w / z, h / z
            x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            image = image.resize((w, h), Image.Resampling.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
        elif z < 1.0:  # a wider field: the frame shrunk and tiled with its mirror images
            small = image.resize((max(1, int(w * z)), max(1, int(h * z))), Image.Resampling.BICUBIC)
            tiled = Image.new("RGB", (w, h))
            for ix, x in enumerate(range(0, w, small.width)):
                for iy, y in enumerate(range(0, h, small.height)):
                    tile = small.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if ix % 2 else small
                    tiled.paste(tile.transpose(Image.Transpose.FLIP_TOP_BOTTOM) if iy % 2 else tile, (x, y))
            image = tiled
        if rng.random() < self.p_blur:
            image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(*self.blur_radius))))
        g = float(rng.uniform(*self.gamma))
        image = image.point([int(round(255.0 * (i / 255.0) ** g)) for i in range(256)] * 3)
        return self.color(image, rng)


def _pbc_cells(side: str, with_platelets: bool) -> dict[str, list[Path]]:
    out = {}
    for d in sorted(p for p in PBC.iterdir() if p.is_dir()):
        if d.name == "platelet" and not with_platelets:
            continue
        out[d.name] = [p for p in sorted(d.glob("*.jpg")) if half(f"pbc/{d.name}/{p.name}") == side]
    return out


def _mosaic(paths: Sequence[Path]) -> Image.Image:
    """Six cells in a 3x2 grid: a 720x480 frame, the 4:3 of a camera."""
    out = Image.new("RGB", (3 * _TILE, 2 * _TILE))
    for k, p in enumerate(paths):
        with Image.open(p) as im:
            out.paste(
                im.convert("RGB").resize((_TILE, _TILE), Image.Resampling.BICUBIC), ((k % 3) * _TILE, (k // 3) * _TILE)
            )
    return out


def _mosaics(side: str, n: int, seed: int) -> list[tuple[str, Image.Image]]:
    rng = np.random.default_rng([seed, 1])
    pool = [p for paths in _pbc_cells(side, with_platelets=False).values() for p in paths]
    out = []
    for k in range(n):
        picks = [pool[int(i)] for i in rng.choice(len(pool), 6, replace=False)]
        out.append((f"pbc_mosaic_{side}_{k:04d}", _mosaic(picks)))
    return out


def _bccd(side: str) -> list[Path]:
    return [p for p in sorted((BCCD / "JPEGImages").glob("*.jpg")) if half(f"bccd/{p.name}") == side]


def _write(image: Image.Image, dest: Path, name: str, source: str) -> Frame:
    path = dest / f"{name}.png"
    image.save(path, format="PNG")
    return Frame(path, BENIGN, hashlib.sha256(path.read_bytes()).hexdigest(), source)


def training_frames(dest: Path, views: int, mosaics: int = 150, seed: int = 0) -> list[Frame]:
    """The train half of the other sources, each image as it is and ``views - 1`` changed copies, as PNG files."""
    dest.mkdir(parents=True, exist_ok=True)
    augment = SceneAugment()
    images: list[tuple[str, str, Image.Image]] = []
    for p in _bccd("train"):
        with Image.open(p) as im:
            images.append((f"bccd_{p.stem}", "bccd", im.convert("RGB")))
    images += [(name, "pbc_mosaic", im) for name, im in _mosaics("train", mosaics, seed)]
    out = []
    for i, (name, source, image) in enumerate(images):
        rng = np.random.default_rng([seed, 2, i])
        for v in range(views):
            view = image if v == 0 else augment(image, rng)
            out.append(_write(view, dest, f"{name}_v{v}", f"other:{source}:{name}:v{v}"))
    return out


def holdout_sources(dest: Path, seed: int = 0) -> dict[str, list[Frame]]:
    """The holdout half: BCCD frames, PBC mosaic frames, PBC single cells (20 of each type)."""
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 3])
    cells = []
    for t, paths in _pbc_cells("holdout", with_platelets=True).items():
        for i in sorted(rng.choice(len(paths), min(_HOLDOUT_CELLS_PER_TYPE, len(paths)), replace=False)):
            cells.append(Frame(paths[int(i)], BENIGN, "", f"pbc_cells:{t}/{paths[int(i)].name}"))
    return {
        "bccd": [Frame(p, BENIGN, "", f"bccd:{p.name}") for p in _bccd("holdout")],
        "pbc_mosaic": [
            _write(im, dest, name, f"pbc_mosaic:{name}") for name, im in _mosaics("holdout", _HOLDOUT_MOSAICS, seed)
        ],
        "pbc_cells": cells,
    }
