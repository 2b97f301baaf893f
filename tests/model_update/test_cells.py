"""The update loop for the cell model (wbc_cells) on a small set, with the real training code and real archives.

A lab dataset in ``make dataset``'s layout (two real B-ALL frames: the cells of one on the training side, one of
them marked artefact; the other frame's cells on the test side) -> ``model_update.cell_retrain`` (the served
typer's head, one short epoch, on a few original cells of each source plus the lab's) -> the gate refuses a
deliberately worse candidate (the good one's classifier with the blast and lymphocyte rows swapped) and passes the
retrained one -> promotion and rollback of the cell model (the record; TorchServe's side is in
tests/portal/test_model_loop_torchserve.py). Run under the heavy lock (it trains); about a minute on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from core.aspect import to_upload_box
from model_update import cell_retrain, gate
from model_update.cell_retrain import save_candidate
from model_update.retrain import pack_candidate, unpack
from served_model.cell_typer import load_typer
from serving.versions import PromotionError, Versions
from training.cell_weak import frame_cells, usable
from training.data import load_split

pytestmark = [pytest.mark.slow]

MODEL = "wbc_cells"
REPO = Path(__file__).resolve().parents[2]
SMALL = ["--limit", "2", "--weak-frames", "4"]  # 2 PBC cells per class, 8 BCCD cells, 4 B-ALL frames per part


def _lab_dataset(root: Path) -> tuple[Path, dict[str, int]]:
    """A dataset as ``make dataset`` writes it: two malignant frames, one per side, their cells typed blast."""
    split = load_split()
    frames = [s for s in split.train if s.class_name == "Pro"][-200::50]
    images, cells, counts = [], [], {"train": 0, "test": 0, "artefact": 0}
    out = root / "lab-test00000000"
    (out / "files").mkdir(parents=True)
    for side in ("train", "test"):
        for s in frames:
            found = frame_cells(s.path)
            boxes = [b for b, sc in zip(found.boxes, found.scores, strict=True) if usable(sc, b, found.rbc_radius)]
            if boxes:
                break
        frames.remove(s)
        data = s.path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        (out / "files" / f"{sha}.jpg").write_bytes(data)
        images.append({"sha256": sha, "file": f"files/{sha}.jpg", "side": side, "label": "Pro", "specimen": side})
        for k, box in enumerate(boxes):
            label = "artefact" if side == "train" and k == 0 else "blast"
            counts["artefact" if label == "artefact" else side] += 1
            cells.append(
                {
                    "image_sha256": sha,
                    "index": k,
                    "box": to_upload_box(box, 4.0 / 3.0),  # the portal stores boxes in the upload's pixels
                    "specimen": side,
                    "side": side,
                    "label": label,
                    "decision": "artefact" if label == "artefact" else "confirmed",
                }
            )
    (out / "manifest.json").write_text(json.dumps({"dataset": out.name, "images": images, "cells": cells}))
    (root / "LATEST").write_text(out.name + "\n")
    return out, counts


def _degrade(versions: Versions, good: str) -> str:
    """A worse candidate: the good one with its classifier's blast and lymphocyte rows swapped."""
    work = unpack(versions.archive(good), versions.root / "degrade-work")
    typer = load_typer(work / "model")
    b, lym = typer.spec.classes.index("blast"), typer.spec.classes.index("lymphocyte")
    with torch.no_grad():
        for t in (typer.net.classifier.weight, typer.net.classifier.bias):
            t[[b, lym]] = t[[lym, b]].clone()
    card = versions.card(good)
    assert card is not None
    bad = versions.next_version(good)
    config = json.loads((work / "model" / "model_config.json").read_text())
    pack_candidate(versions, save_candidate(typer, bad, config), card, bad, {"note": "blast and lymphocyte swapped"})
    shutil.rmtree(work)
    return bad


def test_cell_loop_retrains_gates_and_switches(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    store = tmp_path / "model_store"
    store.mkdir()
    for name in (f"{MODEL}.mar", f"{MODEL}.card.json"):
        shutil.copyfile(REPO / "model_store" / name, store / name)
    dirs = ["--model-store", str(store), "--versions", str(tmp_path / "model_versions")]
    dirs += ["--datasets", str(tmp_path / "datasets")]
    dataset, counts = _lab_dataset(tmp_path / "datasets")
    versions = Versions.of(MODEL, tmp_path / "model_versions", store)
    shipped = versions.base_version()
    # retrain: the served head, one short epoch, on the original cells plus the lab's training side
    assert cell_retrain.main(["--model", MODEL, *dirs, *SMALL, "--epochs", "1", "--lr", "1e-5", "--threads", "2"]) == 0
    (good,) = versions.candidates()
    card = versions.card(good)
    assert card is not None and card["version"] == good != shipped
    update = card["training"]["lab_update"]
    assert update["base_version"] == shipped and update["dataset"] == dataset.name
    assert update["n_lab"] == counts["train"] and update["lab_artefacts_left_out"] == counts["artefact"]
    assert {"pbc", "bccd", "all4"} <= set(update["n_original"])
    packed = unpack(versions.archive(good), tmp_path / "u")
    assert json.loads((packed / "model_card.json").read_text())["version"] == good
    locked = json.loads((tmp_path / "model_versions" / "locked_test" / "cells.json").read_text())
    lab_locked = [i for i in locked["items"] if i["source"].startswith("lab:")]
    assert len(lab_locked) == counts["test"] and {i["label"] for i in lab_locked} == {"blast"}
    assert {i["source"] for i in locked["items"]} >= {"pbc", "bccd", "all4"}
    # the gate refuses a worse candidate (exit 1), and promotion of it is refused
    bad = _degrade(versions, good)
    assert gate.main(["--model", MODEL, "--version", bad, *dirs]) == 1
    report = versions.report(bad)
    assert report is not None and report["kind"] == "cells" and not report["passed"]
    failed = {c["name"] for c in report["criteria"] if not c["passed"]}
    assert {"no_new_blast_as_normal", "blast_sensitivity_not_lower"} <= failed, report["criteria"]
    assert (
        report["locked_test_set"]["sha256"]
        == hashlib.sha256(
            json.dumps([(i["source"], i["sha256"], i["box"], i["label"]) for i in locked["items"]]).encode()
        ).hexdigest()
    )
    with pytest.raises(PromotionError, match="failed"):
        versions.plan_promotion(bad)
    # it passes the retrained one, on the same locked cells
    assert gate.main(["--model", MODEL, "--version", good, *dirs]) == 0
    passed = versions.report(good)
    assert passed is not None and passed["passed"] and passed["locked_test_set"] == report["locked_test_set"]
    assert {c["name"] for c in passed["criteria"]} == {
        "blast_sensitivity_not_lower",
        "macro_f1_max_drop",
        "calibration_bound",
        "no_new_blast_as_normal",
    }
    assert (versions.root / f"gate-{good}.md").read_text().startswith(f"# Gate: {MODEL} {good} against the served")
    # promotion and rollback (the record; no TorchServe here)
    versions.plan_promotion(good)
    versions.note("promote", shipped, good, "t", f"gate-{good}.json")
    assert versions.default_version() == good and versions.plan_rollback()[1] == shipped
    versions.note("rollback", good, shipped, "t", None)
    assert versions.default_version() == shipped
