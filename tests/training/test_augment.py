"""Augmentation and stain functions: deterministic under a seed, and doing what they claim."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from served_model.stain import (
    LUMINANCE_REFERENCE,
    REINHARD_REFERENCE,
    get_normalizer,
    hed_to_rgb,
    lab_stats,
    lab_to_rgb,
    reinhard_normalize,
    rgb_to_hed,
    rgb_to_lab,
    standardize_luminance,
)
from tests.conftest import DATA_ALL4
from training.augment import PERTURBATIONS, ColorAugment, TrainAugment, geometric_grid, hue_shift, white_balance


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.open(DATA_ALL4 / "original" / "Pre" / "WBC-Malignant-Pre-010.jpg").convert("RGB")


def test_train_augment_deterministic(image: Image.Image) -> None:
    aug = TrainAugment(seed=3)
    a, b = aug(image, index=5, epoch=2), aug(image, index=5, epoch=2)
    assert a.size == image.size
    assert np.array_equal(np.asarray(a), np.asarray(b))
    others = [np.asarray(TrainAugment(seed=3)(image, index=5, epoch=e)) for e in range(3, 6)]
    assert any(not np.array_equal(np.asarray(a), o) for o in others)
    assert not np.array_equal(np.asarray(TrainAugment(seed=4)(image, 5, 2)), np.asarray(a))


def test_color_augment_changes_colour(image: Image.Image) -> None:
    out = ColorAugment(p_gray=0.0)(image, np.random.default_rng(0))
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(image, dtype=int)).mean() > 1.0


def test_perturbations(image: Image.Image) -> None:
    g = np.asarray(PERTURBATIONS["grayscale"](image))
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    wb = np.asarray(white_balance(image, (1.0, 1.0, 0.5)), dtype=float)
    assert wb[..., 2].mean() == pytest.approx(np.asarray(image, dtype=float)[..., 2].mean() * 0.5, rel=0.02)
    assert np.array_equal(np.asarray(hue_shift(image, 0.0)), np.asarray(image.convert("HSV").convert("RGB")))
    for fn in PERTURBATIONS.values():
        assert np.array_equal(np.asarray(fn(image)), np.asarray(fn(image)))


def test_geometric_grid() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert torch.equal(geometric_grid(x, 4, False), x)  # type: ignore[arg-type]
    assert torch.equal(geometric_grid(geometric_grid(x, 1, False), 3, False), x)  # type: ignore[arg-type]
    assert torch.equal(geometric_grid(x, 0, True)[..., 0], x[..., -1])  # type: ignore[index]
    n = geometric_grid(x.numpy(), 2, False)
    assert np.array_equal(n, torch.rot90(x, 2, dims=(-2, -1)).numpy())  # type: ignore[arg-type]


def test_lab_and_hed_roundtrip(image: Image.Image) -> None:
    a = np.asarray(image)
    assert np.abs(lab_to_rgb(rgb_to_lab(a)).astype(int) - a).max() <= 1
    assert np.abs(hed_to_rgb(rgb_to_hed(a)).astype(int) - a).max() <= 1
    # white is L=100, a=b=0
    assert rgb_to_lab(np.full((1, 1, 3), 255, np.uint8))[0, 0] == pytest.approx([100.0, 0.0, 0.0], abs=0.05)


def test_reinhard_matches_reference(image: Image.Image) -> None:
    out = reinhard_normalize(white_balance(image, (1.2, 0.9, 0.8)))
    mean, std = lab_stats(out)
    assert mean == pytest.approx(REINHARD_REFERENCE["mean"], abs=2.0)
    assert std == pytest.approx(REINHARD_REFERENCE["std"], rel=0.15)
    assert get_normalizer("reinhard") is reinhard_normalize
    gray = np.asarray(get_normalizer("grayscale")(image))
    assert (gray[..., 0] == gray[..., 2]).all()
    with pytest.raises(KeyError, match="unknown stain"):
        get_normalizer("macenko-typo")


def test_luminance_normaliser_removes_exposure_and_stain_changes(image: Image.Image) -> None:
    out = np.asarray(standardize_luminance(image), dtype=np.float64)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    assert out[..., 0].mean() == pytest.approx(LUMINANCE_REFERENCE[0], abs=2.0)
    assert out[..., 0].std() == pytest.approx(LUMINANCE_REFERENCE[1], rel=0.1)
    assert get_normalizer("luminance") is standardize_luminance
    scale = out[..., 0].std()

    def change(other: Image.Image) -> float:
        # mean absolute change, in units of the image's own spread
        return float(np.abs(np.asarray(standardize_luminance(other), dtype=np.float64) - out).mean() / scale)

    def raw_change(other: Image.Image) -> float:
        a, b = (np.asarray(im.convert("L"), dtype=np.float64) for im in (other, image))
        return float(np.abs(a - b).mean() / b.std())

    darker = Image.fromarray((np.asarray(image, dtype=np.float64) * 0.8).astype(np.uint8))
    for other in (reinhard_normalize(image), darker, PERTURBATIONS["grayscale"](image)):
        assert change(other) < 0.05
    # Reinhard normalisation moves raw luminance by far more than that
    assert raw_change(reinhard_normalize(image)) > 0.2
    # a flat image is shifted, not blown up
    flat = np.asarray(standardize_luminance(Image.new("RGB", (8, 8), (90, 90, 90))))
    assert (np.abs(flat.astype(int) - round(LUMINANCE_REFERENCE[0])) <= 1).all()


@pytest.mark.parametrize("model", ["mobilenetv3_lstm", "xception_bigru"])
def test_the_luminance_transform_is_the_normaliser_then_the_tensor_bit_for_bit(model: str) -> None:
    """Serving and evaluation read the luminance models' input through one lookup of the standardised grey
    level (:func:`served_model.transforms.grey_level_table`): the same tensor as the definition it shortens,
    the normaliser's RGB image through ``to_normalized_tensor``."""
    from core.registry import get_spec
    from served_model.transforms import build_eval_transform, data_config, resize_frame, to_normalized_tensor

    spec = get_spec(model)
    cfg = data_config(spec)
    rng = np.random.default_rng(5)
    images = [Image.open(p).convert("RGB") for p in sorted((DATA_ALL4 / "original" / "Early").glob("*.jpg"))[:6]]
    images += [Image.fromarray(rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)) for _ in range(3)]
    images += [Image.new("RGB", (80, 80), (v, v, v)) for v in (0, 90, 255)]
    images += [Image.fromarray(rng.integers(0, 256, (150, 120), dtype=np.uint8))]  # grey, not RGB
    transform = build_eval_transform(spec)
    for image in images:
        defined = to_normalized_tensor(
            standardize_luminance(resize_frame(image, spec.input_size, cfg["interpolation"])), cfg["mean"], cfg["std"]
        )
        served = transform(image)
        assert served.dtype == torch.float32 and served.is_contiguous()
        assert torch.equal(served, defined)
