"""Training smoke runs on a few real images: the loss goes down, checkpoints resume, outputs load."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.registry import get_spec
from served_model import compat  # noqa: F401
from served_model.network import HybridClassifier, load_model, save_model
from tests.conftest import DATA_ALL4
from training.data import Split, load_samples
from training.loop import Log, seed_everything
from training.train import train_cached, train_end2end


@pytest.fixture(scope="module")
def tiny_split() -> Split:
    samples = load_samples(DATA_ALL4 / "original")
    by_class: dict[int, list] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    train = [s for lab in sorted(by_class) for s in by_class[lab][:4]]
    return Split(train=train, val=train[::4], seed=0, val_fraction=0.2)


def test_end2end_lowers_loss_and_resumes(tiny_split: Split, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    seed_everything(0)
    spec = dataclasses.replace(get_spec("mobilenetv3_lstm"), input_size=64)
    model = HybridClassifier(spec)
    log = Log(tmp_path / "train.log")
    soft = np.full((len(tiny_split.train), 4), 0.25, dtype=np.float32)
    res = train_end2end(model, tiny_split, tmp_path, 5, 3e-3, 8, 0, "cpu", log, teacher_soft=soft, validate=False)
    losses = [h["train_loss"] for h in res["history"]]
    assert len(losses) == 5
    assert np.mean(losses[-2:]) < losses[0], losses
    assert (tmp_path / "checkpoint.pt").exists()
    assert (tmp_path / "train.log").read_text().count('"epoch"') == 5
    # resume: one more epoch starts where the checkpoint ended
    model2 = HybridClassifier(spec)
    res2 = train_end2end(model2, tiny_split, tmp_path, 6, 3e-3, 8, 0, "cpu", log, validate=False)
    assert [h["epoch"] for h in res2["history"]] == [1, 2, 3, 4, 5, 6]  # the checkpoint keeps the history
    save_model(model2, tmp_path / "model", dtype=torch.float16)
    loaded = load_model(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "model_config.json").read_text())["dtype"] == "float16"
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(loaded(x), model2.eval().float()(x), atol=5e-2)


def _write_separable_cache(split: Split, cache_dir: Path, channels: int, side: int) -> None:
    """Fake-but-separable maps in the cache format: the class signal sits in channel = label."""
    from training.features import cache_path

    cache_dir.mkdir()
    rng = np.random.default_rng(0)
    for part, samples in (("train", split.train), ("val", split.val)):
        lab = np.array([s.label for s in samples])
        maps = rng.normal(size=(len(samples), channels, side, side)).astype(np.float16)
        maps[np.arange(len(samples)), lab] += 8.0
        np.save(cache_path(cache_dir, part, "orig"), maps)
        cache_path(cache_dir, part, "orig").with_suffix(".json").write_text(
            json.dumps({"relpaths": [s.relpath for s in samples]})
        )


def test_cached_recipe_lowers_loss(tiny_split: Split, tmp_path: Path) -> None:
    """The cached recipe (frozen CNN) on fake-but-separable feature maps."""
    torch.set_num_threads(2)
    seed_everything(0)
    spec = dataclasses.replace(get_spec("mobilenetv3_lstm"), input_size=64)
    model = HybridClassifier(spec)
    _write_separable_cache(tiny_split, tmp_path / "cache", int(model.backbone.num_features), 2)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    log = Log(tmp_path / "train.log")
    res = train_cached(model, tiny_split, tmp_path / "cache", ["orig", "gray"], tmp_path, 8, 5e-3, 8, 0, "cpu", log)
    assert res["views"] == ["orig"]
    losses = [h["train_loss"] for h in res["history"]]
    assert losses[-1] < losses[0]
    assert res["history"][-1]["val_orig_acc"] >= 0.5
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())


def test_cached_recipe_fine_tunes_the_cnn_tail(tiny_split: Split, tmp_path: Path) -> None:
    """With a cut, the cache holds the stem's maps and the blocks after the cut train; the stem does not."""
    torch.set_num_threads(2)
    seed_everything(0)
    spec = dataclasses.replace(get_spec("effnetb3_bigru"), input_size=64)
    model = HybridClassifier(spec)
    stem, tail = model.cnn_split("blocks")
    with torch.no_grad():
        channels = int(stem(torch.zeros(1, 3, 64, 64)).shape[1])
    _write_separable_cache(tiny_split, tmp_path / "cache", channels, 2)
    stem_before = {k: v.clone() for k, v in stem.state_dict().items()}
    tail_before = {k: v.clone() for k, v in tail.state_dict().items()}
    log = Log(tmp_path / "train.log")
    res = train_cached(
        model, tiny_split, tmp_path / "cache", ["orig"], tmp_path, 8, 5e-3, 8, 0, "cpu", log, cnn_split="blocks"
    )
    losses = [h["train_loss"] for h in res["history"]]
    assert losses[-1] < losses[0], losses
    assert res["history"][-1]["val_orig_acc"] >= 0.5
    assert all(torch.equal(stem_before[k], v) for k, v in stem.state_dict().items())
    assert any(not torch.equal(tail_before[k], v) for k, v in tail.state_dict().items())


def test_pretrain_backbone_writes_loadable_cnn_stage(tiny_split: Split, tmp_path: Path) -> None:
    """Domain pretraining: cell-type folders -> a backbone file that loads strictly as init weights."""
    import shutil

    from served_model.network import load_backbone_weights
    from training.pretrain import pretrain_backbone, pretrain_samples

    root = tmp_path / "cells"
    for s in tiny_split.train:
        (root / f"type{s.label % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(s.path, root / f"type{s.label % 2}" / s.path.name)
    samples = pretrain_samples(root)
    assert len(samples) == len(tiny_split.train) and {s.label for s in samples} == {0, 1}
    torch.set_num_threads(2)
    spec = dataclasses.replace(get_spec("mobilenetv3_lstm"), input_size=64)
    model = HybridClassifier(spec)
    log = Log(tmp_path / "train.log")
    out = tmp_path / "pretrain_backbone.safetensors"
    res = pretrain_backbone(model, root, out, 2, 3e-3, 8, 0, "cpu", log, max_steps=3)
    assert out.exists() and res["n_images"] == len(samples)
    other = HybridClassifier(spec)
    load_backbone_weights(other, out)
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(other.eval().forward_cnn(x), model.eval().forward_cnn(x), atol=1e-5)
    # present: reused, not retrained
    assert pretrain_backbone(model, root, out, 2, 3e-3, 8, 0, "cpu", log) == {"reused": True}


def test_teacher_soft_labels_from_model_dir(tiny_split: Split, tmp_path: Path) -> None:
    """A teacher directory holding only model/ (e.g. unpacked from its .mar): soft labels computed, then cached."""
    from training.train import TEACHER_FILE, teacher_soft_labels

    spec = dataclasses.replace(get_spec("mobilenetv3_lstm"), input_size=64)
    save_model(HybridClassifier(spec), tmp_path / "model")
    soft = teacher_soft_labels(tmp_path, tiny_split, temperature=2.0)
    assert soft.shape == (len(tiny_split.train), 4)
    assert np.allclose(soft.sum(1), 1.0, atol=1e-5)
    assert (tmp_path / TEACHER_FILE).exists()
    assert np.array_equal(teacher_soft_labels(tmp_path, tiny_split), soft)
    assert np.array_equal(teacher_soft_labels(tmp_path / TEACHER_FILE, tiny_split), soft)
