"""``model_update.retrain --end-to-end``: a candidate whose CNN stage is fine-tuned too, on augmented images, from
the shipped mobilenetv3_lstm archive (a small part of the original frames, one epoch), packed with its
out-of-distribution score refitted to the fine-tuned features."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from model_update import retrain
from served_model.network import load_model
from serving.versions import Versions

REPO = Path(__file__).resolve().parents[2]
MODEL = "mobilenetv3_lstm"


@pytest.mark.slow
def test_end_to_end_candidate_trains_the_cnn_stage_and_refits_its_score(tmp_path: Path) -> None:
    store = tmp_path / "model_store"
    store.mkdir()
    for name in (f"{MODEL}.mar", f"{MODEL}.card.json"):
        shutil.copyfile(REPO / "model_store" / name, store / name)
    versions_root = tmp_path / "model_versions"
    args = ["--model", MODEL, "--model-store", str(store), "--versions", str(versions_root)]
    args += ["--datasets", str(tmp_path / "datasets"), "--base-limit", "48", "--epochs", "1", "--lr", "1e-3"]
    assert retrain.main([*args, "--batch-size", "16", "--threads", "2", "--end-to-end"]) == 0

    versions = Versions.of(MODEL, versions_root, store)
    (candidate,) = versions.candidates()
    card = versions.card(candidate)
    assert card is not None
    update = card["training"]["lab_update"]
    assert update["recipe"].startswith("end to end from the served weights (CNN stage included)")
    assert len(update["history"]) == 1 and update["n_original"] > 0 and update["n_lab"] == 0
    assert card["ood"]["info"]["refitted"]  # the score reads the fine-tuned CNN's features now

    base = load_model(retrain.unpack(versions.store_archive(), tmp_path / "base") / "model")
    new = load_model(retrain.unpack(versions.archive(candidate), tmp_path / "new") / "model")
    before, after = dict(base.named_parameters()), dict(new.named_parameters())
    cnn = [n for n in before if n.startswith("backbone.")]
    moved = [n for n in cnn if not torch.equal(before[n], after[n])]
    assert len(moved) > len(cnn) // 2  # the CNN stage trained (the frozen recipe leaves every one as it was)
    assert not torch.equal(before["head.weight"], after["head.weight"])
