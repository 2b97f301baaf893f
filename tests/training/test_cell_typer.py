"""The cell typer: crop geometry, preprocessing, save/load, the offline init file, the frozen-stem split,
and the small helpers of its training and evaluation (sampling weights, the coverage threshold)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.paths import WEIGHTS
from core.registry import CELL_CLASSES, get_cell_spec
from served_model.cell_typer import CellTyper, build_typer_transform, crop_box, crop_cell, load_typer, save_typer
from served_model.stain import lab_stats
from training.cell_typer import create_typer, typer_split
from training.cell_typer_eval import coverage_threshold
from training.train_cells import DEFAULT_INIT, CropSet, LabStatsJitter, sample_weights

SPEC = get_cell_spec("wbc_cells")
INIT = WEIGHTS / "mobilenetv2_100.ft_dogbreeds19.pad_same.fp16.safetensors"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def typer() -> CellTyper:
    torch.manual_seed(0)
    return create_typer(SPEC, None).eval()


def _batch(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SPEC.input_size, SPEC.input_size, generator=g)


# -- crop geometry ---------------------------------------------------------------------------------


def test_crop_box_grows_by_margin_and_is_square_around_the_centre() -> None:
    # 40 x 20 box centred at (120, 110): side 40 x (1 + 2 x 0.25) = 60
    assert crop_box((100, 100, 140, 120), 0.25, 640, 480) == (90, 80, 150, 140)
    x0, y0, x1, y1 = crop_box((10.5, 300, 51.2, 350), 0.4, 640, 480)
    assert x1 - x0 == y1 - y0 == round(50 * 1.8)


def test_crop_box_is_shifted_inside_at_the_borders() -> None:
    # near the top-left corner: same square side, moved to start at 0
    assert crop_box((0, 0, 40, 40), 0.25, 640, 480) == (0, 0, 60, 60)
    # near the bottom-right corner
    assert crop_box((610, 450, 640, 480), 0.5, 640, 480) == (580, 420, 640, 480)


def test_crop_box_larger_than_the_image_is_clipped() -> None:
    assert crop_box((10, 10, 90, 50), 0.25, 100, 60) == (0, 0, 100, 60)


def test_crop_box_accepts_degenerate_and_reversed_boxes() -> None:
    # a zero-size box counts as 1 px: side round(1 x 1.5) = 2 around its point
    assert crop_box((50, 50, 50, 50), 0.25, 100, 100) == (49, 49, 51, 51)
    x0, y0, x1, y1 = crop_box((50, 50, 50, 50), 0.0, 100, 100)
    assert x1 - x0 == y1 - y0 == 1
    assert crop_box((140, 120, 100, 100), 0.25, 640, 480) == crop_box((100, 100, 140, 120), 0.25, 640, 480)
    with pytest.raises(ValueError):
        crop_box((0, 0, 1, 1), 0.25, 0, 10)


def test_crop_cell_is_square_and_shows_the_box() -> None:
    arr = np.full((480, 640, 3), 230, dtype=np.uint8)
    arr[100:120, 100:140] = (120, 40, 160)  # the "cell"
    crop = crop_cell(Image.fromarray(arr), (100, 100, 140, 120), SPEC)
    assert crop.size == (60, 60) and crop.mode == "RGB"
    c = np.asarray(crop)
    assert (c[20:40, 10:50] == (120, 40, 160)).all()  # box at offset (10, 20) inside the crop
    # a square that does not fit the image is padded with the background colour
    small = crop_cell(Image.fromarray(arr[:60, :100]), (10, 10, 90, 50), SPEC)
    assert small.size == (100, 100)
    assert tuple(np.asarray(small)[0, 0]) == (230, 230, 230)


# -- preprocessing and model ---------------------------------------------------------------------------


def test_transform_output_shape_dtype_and_range() -> None:
    t = build_typer_transform(SPEC)(Image.new("RGB", (217, 217), (255, 0, 128)))
    assert t.shape == (3, SPEC.input_size, SPEC.input_size) and t.dtype == torch.float32
    # mean = std = 0.5: 255 -> 1, 0 -> -1
    assert torch.allclose(t[0], torch.ones_like(t[0])) and torch.allclose(t[1], -torch.ones_like(t[1]))


def test_logits_and_pooled_features(typer: CellTyper) -> None:
    x = _batch(2)
    with torch.no_grad():
        logits = typer(x)
        pooled = typer.forward_head(typer.forward_features(x), pre_logits=True)
    assert logits.shape == (2, len(CELL_CLASSES))
    assert pooled.shape == (2, typer.num_features)


def test_save_and_load_give_identical_logits(typer: CellTyper, tmp_path) -> None:
    typer.calibration = {"temperature": 1.5, "abstain_threshold": 0.6}
    save_typer(typer, tmp_path / "m", extra={"note": "test"})
    loaded = load_typer(tmp_path / "m")
    assert not loaded.training and loaded.spec == SPEC
    assert loaded.calibration == {"temperature": 1.5, "abstain_threshold": 0.6}
    x = _batch(3)
    with torch.no_grad():
        assert torch.equal(typer(x), loaded(x))


def test_offline_init_file_loads_strictly() -> None:
    assert INIT.is_file(), INIT
    assert DEFAULT_INIT == INIT
    from safetensors.torch import load_file

    model = create_typer(SPEC, str(INIT))
    assert model.init_info["source"] == "file" and model.init_info["strict"] is True
    assert model.init_info["path"] == INIT.name and len(model.init_info["sha256"]) == 64
    ref = load_file(str(INIT))
    state = model.net.state_dict()
    for k, v in ref.items():
        if not k.startswith("classifier."):
            assert torch.equal(state[k], v.float()), k
    assert state["classifier.weight"].shape == (len(CELL_CLASSES), model.num_features)


def test_frozen_stem_split_composes_to_the_features(typer: CellTyper) -> None:
    stem, tail = typer_split(typer, 3)
    x = _batch(2)
    with torch.no_grad():
        assert torch.allclose(tail(stem(x)), typer.forward_features(x), atol=1e-5)
    with pytest.raises(ValueError):
        typer_split(typer, len(typer.net.blocks) - 1)


# -- training / evaluation helpers --------------------------------------------------------------------


def test_sample_weights_balance_sources_and_temper_bccd_classes() -> None:
    crops = CropSet()
    for i in range(80):
        crops.add(Image.new("RGB", (4, 4)), i % 8, "pbc", f"p{i}")
    for i in range(100):
        crops.add(Image.new("RGB", (4, 4)), 6, "bccd", f"n{i}")  # neutrophils
    for i in range(4):
        crops.add(Image.new("RGB", (4, 4)), 5, "bccd", f"m{i}")  # monocytes
    w = sample_weights(crops, bccd_share=0.25)
    src = np.array(crops.sources)
    labels = np.array(crops.labels)
    assert w.sum() == pytest.approx(1.0)
    assert w[src == "bccd"].sum() == pytest.approx(0.25 / 1.25)
    mono, neut = w[(src == "bccd") & (labels == 5)].sum(), w[(src == "bccd") & (labels == 6)].sum()
    assert mono / neut == pytest.approx(np.sqrt(4 / 100))  # class mass ~ sqrt(count)
    assert sample_weights(crops, 0.0)[src == "bccd"].sum() == 0


def test_weak_cells_get_their_share_half_to_blast() -> None:
    blast = CELL_CLASSES.index("blast")
    crops = CropSet()
    for i in range(80):
        crops.add(Image.new("RGB", (4, 4)), i % 8, "pbc", f"p{i}")
    for i in range(30):
        crops.add(Image.new("RGB", (4, 4)), blast, "all4", f"b{i}")
    for i in range(10):
        crops.add(Image.new("RGB", (4, 4)), CELL_CLASSES.index("lymphocyte"), "all4", f"l{i}")
    w = sample_weights(crops, bccd_share=0.0, weak_share=0.5)
    src, labels = np.array(crops.sources), np.array(crops.labels)
    assert w[src == "all4"].sum() == pytest.approx(0.5 / 1.5)
    assert w[(src == "all4") & (labels == blast)].sum() == pytest.approx(w[(src == "all4") & (labels != blast)].sum())
    assert sample_weights(crops, 0.0, 0.0)[src == "all4"].sum() == 0


def test_a_saved_typer_is_fine_tuned_with_its_classes_kept_by_name(tmp_path) -> None:
    from dataclasses import replace

    torch.manual_seed(3)
    old_spec = replace(SPEC, classes=CELL_CLASSES[:8])
    old = create_typer(old_spec, None).eval()
    save_typer(old, tmp_path / "old")
    new = create_typer(SPEC, str(tmp_path / "old")).eval()
    assert new.spec.classes == SPEC.classes and new.init_info["source"] == "typer"
    x = _batch(3)
    with torch.no_grad():
        a, b = old(x), new(x)
    assert torch.allclose(a, b[:, :8], atol=1e-5)  # the eight kept by name
    blast = SPEC.classes.index("blast")
    assert torch.allclose(b[:, blast], old.net.classifier.bias.min().expand(3), atol=1e-6)  # starts rare


def test_coverage_threshold_keeps_the_requested_share() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(8), size=1000)
    t = coverage_threshold(probs, 0.95)
    kept = (probs.max(axis=1) >= t).mean()
    assert 0.95 <= kept <= 0.952
    assert coverage_threshold(probs, 1.0) == probs.max(axis=1).min()


def test_lab_stats_jitter_moves_colour_statistics_within_range() -> None:
    rng = np.random.default_rng(3)
    arr = rng.integers(60, 230, size=(48, 48, 3), dtype=np.uint8)
    image = Image.fromarray(arr)
    assert LabStatsJitter(p=0.0)(image, rng) is image
    jitter = LabStatsJitter(p=1.0)
    mean0, _ = lab_stats(image)
    shifts = []
    for seed in range(8):
        out = jitter(image, np.random.default_rng(seed))
        assert out.size == image.size and out.mode == "RGB"
        shifts.append(np.asarray(lab_stats(out)[0]) - np.asarray(mean0))
    shifts = np.abs(np.array(shifts))
    assert shifts.max() > 2.0  # it does change the colour
    assert (shifts <= np.asarray(jitter.mean_shift) + 3.0).all()  # within range (+ gamut clipping)
