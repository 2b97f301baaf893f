"""The weak labels of the B-ALL frames' cells and the augmentations that keep "blast" from meaning blur or colour."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.registry import CELL_CLASSES
from served_model.stain import lab_stats
from training.cell_weak import MAX_RBC_RADIUS, MIN_SCORE, SURE, CrossStats, Degrade, usable, weak_label

EIGHT = CELL_CLASSES[:8]


def _probs(name: str, p: float) -> np.ndarray:
    out = np.full(len(EIGHT), (1.0 - p) / (len(EIGHT) - 1))
    out[EIGHT.index(name)] = p
    return out


def test_malignant_frame_cells_are_blasts_unless_surely_granulocytes() -> None:
    assert weak_label(True, _probs("lymphocyte", 0.99)) == "blast"
    assert weak_label(True, _probs("monocyte", 0.99)) == "blast"
    assert weak_label(True, _probs("neutrophil", 0.5)) == "blast"
    for name in ("neutrophil", "eosinophil", "basophil"):
        assert weak_label(True, _probs(name, SURE)) is None


def test_benign_frame_cells_are_lymphoid_unless_surely_another_type() -> None:
    assert weak_label(False, _probs("neutrophil", 0.5)) == "lymphocyte"
    assert weak_label(False, _probs("lymphocyte", 0.99)) == "lymphocyte"
    assert weak_label(False, _probs("monocyte", SURE)) == "monocyte"
    assert all(weak_label(False, _probs(n, 0.99)) != "blast" for n in EIGHT)


def test_usable_drops_unsure_fragments_clumps_and_bad_scales() -> None:
    r = 10.0
    assert usable(0.9, (0, 0, 30, 30), r)
    assert not usable(MIN_SCORE - 0.01, (0, 0, 30, 30), r)
    assert not usable(0.9, (0, 0, 15, 15), r)  # 1.5 r: a fragment
    assert not usable(0.9, (0, 0, 80, 30), r)  # 8 r: a clump
    assert not usable(0.9, (0, 0, 90, 90), MAX_RBC_RADIUS + 10)  # the radius itself took a clump for a cell


def test_degrade_keeps_the_size_and_removes_detail() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, size=(128, 128, 3), dtype=np.uint8)
    image = Image.fromarray(arr)
    assert Degrade(p=0.0)(image, rng) is image
    out = Degrade(p=1.0)(image, np.random.default_rng(1))
    assert out.size == image.size and out.mode == "RGB"
    # fine detail (pixel-to-pixel differences) mostly gone, the mean colour kept
    detail = lambda a: np.abs(np.diff(a.astype(float), axis=1)).mean()  # noqa: E731
    assert detail(np.asarray(out)) < 0.5 * detail(arr)
    assert np.asarray(out).mean() == pytest.approx(arr.mean(), abs=6)


def test_cross_stats_takes_a_pool_crops_colour() -> None:
    pink = Image.fromarray(np.full((32, 32, 3), (230, 150, 200), dtype=np.uint8))
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 60, size=(32, 32, 3)).astype(np.uint8)
    blue = Image.fromarray(np.clip(np.asarray(Image.new("RGB", (32, 32), (90, 110, 220))) + noise, 0, 255))
    cross = CrossStats([pink], p=1.0)
    out, swapped = cross.apply(blue, rng)
    assert swapped and out.size == blue.size
    assert np.allclose(lab_stats(out)[0], lab_stats(pink)[0], atol=3.0)
    same, swapped = CrossStats([pink], p=0.0).apply(blue, rng)
    assert same is blue and not swapped
