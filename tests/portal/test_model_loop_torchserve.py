"""The whole update loop end to end with a real TorchServe (mobilenetv3_lstm alone, its shipped archive):

sign-offs of real frames through real jobs -> ``export_dataset`` -> ``model_update.retrain`` (one short epoch
on a small part of the original data) -> the gate refuses a deliberately worse candidate (the good one's head with
the Benign and Pro rows swapped), and promotion of it is refused -> the gate passes the retrained candidate ->
promotion under load (requests in flight the whole time, analyses queued before it) -> new results carry the new
version, nothing lost -> TorchServe restarted: the promoted default restored -> rollback under load -> the old
version again. Run it under the heavy lock (``flock /tmp/heavy.lock``); about 2 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from portal import jobs
from portal.actions.patients import create_specimen
from portal.actions.signoff import sign_off
from portal.actions.uploads import upload_images
from portal.analyses.inference import ModelClient, Prediction
from portal.analyses.models import Analysis
from portal.audit.models import AuditEvent
from portal.models_registry.dataset import side_of, specimen_key
from serving.torchserve import free_ports, start, stop
from serving.versions import VERSIONS_ENV, Versions, restore
from tests.portal.conftest import smear_paths, validated

pytestmark = [pytest.mark.django_db, pytest.mark.integration, pytest.mark.slow]

MODEL = "mobilenetv3_lstm"
REPO = Path(__file__).resolve().parents[2]
BASE_LIMIT = "48"  # original frames for training and for the locked test set's original part (every k-th)


@pytest.fixture
def loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any) -> Iterator[dict[str, Any]]:
    store = tmp_path / "model_store"
    store.mkdir()
    for name in (f"{MODEL}.mar", f"{MODEL}.card.json"):
        shutil.copyfile(REPO / "model_store" / name, store / name)
    monkeypatch.setenv(VERSIONS_ENV, str(tmp_path / "model_versions"))
    info = start(store, [MODEL], workdir=tmp_path / "torchserve", ports=free_ports(), torch_threads=1)
    settings.TORCHSERVE_URL = info.inference_url
    settings.TORCHSERVE_WORKDIR = info.workdir
    settings.TORCHSERVE_KEY = ""
    settings.PORTAL_MODELS = [MODEL]
    settings.PORTAL_MODEL_STORE = store
    state = {"info": info, "store": store, "tmp": tmp_path, "versions": Versions.of(MODEL, model_store=store)}
    try:
        yield state
    finally:
        stop(info=state["info"])


def _training(module: str, loop: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", f"model_update.{module}", "--model", MODEL, "--model-store", str(loop["store"])]
    cmd += ["--datasets", str(loop["tmp"] / "datasets"), *args]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)


def _upload_and_run(technologist: Any, specimen: Any, paths: list[Path]) -> list[Analysis]:
    images = upload_images(technologist, specimen, validated(paths), [MODEL])
    jobs.run_queued()
    return [Analysis.objects.get(image=image) for image in images]


class Load:
    """Requests to the model's default version in a loop, from another thread, until stopped."""

    def __init__(self, frame: bytes) -> None:
        self.frame, self.stop, self.versions, self.errors = frame, threading.Event(), [], []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = ModelClient()
        while not self.stop.is_set():
            outcome = client.analyze(MODEL, self.frame)
            if isinstance(outcome, Prediction):
                self.versions.append(outcome.body["version"])
            else:
                self.errors.append(outcome)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=120)


def _degrade(versions: Versions, good: str) -> str:
    """A worse candidate: the good one with its head's Benign and Pro rows swapped (Pro frames then read Benign)."""
    import torch

    from core.registry import CLASS_NAMES
    from model_update.retrain import pack_candidate, unpack
    from served_model.network import load_model, save_model

    work = unpack(versions.archive(good), versions.root / "degrade-work")
    model = load_model(work / "model")
    b, p = CLASS_NAMES.index("Benign"), CLASS_NAMES.index("Pro")
    with torch.no_grad():
        for t in (model.head.weight, model.head.bias):
            t[[b, p]] = t[[p, b]].clone()
    card = versions.card(good)
    assert card is not None
    bad = versions.next_version(good)
    note = {"note": "degraded on purpose: head rows Benign and Pro swapped"}
    pack_candidate(versions, lambda d: save_model(model.eval(), d, dtype=torch.float16), card, bad, note)
    shutil.rmtree(work)
    return bad


def _specimens_on_both_sides(technologist: Any, patient: Any, test: int, train: int) -> list[Any]:
    """``test`` specimens the dataset's split puts on its test side, then ``train`` on its training side.

    The split is a keyed hash of the specimen's id (portal.models_registry.dataset), and ids depend on the
    database (MySQL does not reuse the ids of rolled-back tests): specimens are created until each side
    has its share, so the test does not depend on where six given ids happen to fall."""
    wanted = {"test": test, "train": train}
    chosen: dict[str, list[Any]] = {"test": [], "train": []}
    n = 0
    while any(len(chosen[side]) < k for side, k in wanted.items()):
        specimen = create_specimen(technologist, patient, {"accession": f"LOOP-{n}", "collected_by": "t"})
        n += 1
        side = side_of(specimen_key(specimen.pk))
        if len(chosen[side]) < wanted[side]:
            chosen[side].append(specimen)
    return chosen["test"] + chosen["train"]


def test_sign_offs_to_dataset_to_gated_promotion_and_rollback(
    loop: dict[str, Any], technologist: Any, reviewer: Any, patient: Any, admin_user: Any, tech_client: Client
) -> None:
    versions: Versions = loop["versions"]
    shipped = versions.base_version()
    # 1. sign-offs: real answers from TorchServe, the reviewer sets each frame's true class
    frames = smear_paths(12)
    for s, specimen in enumerate(_specimens_on_both_sides(technologist, patient, test=2, train=4)):
        for a, path in zip(
            _upload_and_run(technologist, specimen, frames[2 * s : 2 * s + 2]), frames[2 * s :], strict=False
        ):
            assert a.status == "done" and a.model_version == shipped, a.error_message
            sign_off(reviewer, a.image, decision="reclassify", final_label=path.parent.name, comment="truth")
    # 2. the dataset
    call_command("export_dataset", out=loop["tmp"] / "datasets")
    dataset = loop["tmp"] / "datasets" / (loop["tmp"] / "datasets" / "LATEST").read_text().strip()
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert len(manifest["images"]) == 12 and all(r["model_versions"] == {MODEL: shipped} for r in manifest["images"])
    # 3. retrain: one short epoch from the served weights
    run = _training("retrain", loop, "--base-limit", BASE_LIMIT, "--lr", "1e-5", "--threads", "1")
    assert run.returncode == 0, run.stdout + run.stderr
    (good,) = versions.candidates()
    card = versions.card(good)
    assert card is not None and card["training"]["lab_update"]["base_version"] == shipped
    locked = {
        i["sha256"] for i in json.loads((versions.root.parent / "locked_test" / "frames.json").read_text())["items"]
    }
    test_side = {r["sha256"] for r in manifest["images"] if r["side"] == "test"}
    train_side = {r["sha256"] for r in manifest["images"] if r["side"] == "train"}
    assert test_side and test_side <= locked  # the lab's held-out specimens are in the locked set
    assert card["training"]["lab_update"]["n_lab"] == len(train_side - locked)  # and nothing locked is trained on
    # 4. the gate refuses a worse candidate, and so does promotion
    bad = _degrade(versions, good)
    run = _training("gate", loop, "--version", bad)
    assert run.returncode == 1, run.stdout + run.stderr
    report = versions.report(bad)
    assert report is not None and not report["passed"]
    failed = {c["name"] for c in report["criteria"] if not c["passed"]}
    assert {"no_new_malignant_as_benign", "macro_f1_max_drop"} <= failed, report["criteria"]
    with pytest.raises(CommandError, match="failed"):
        call_command("promote_model", model=MODEL, model_version=bad, by=admin_user.username)
    # 5. it passes the retrained one
    run = _training("gate", loop, "--version", good)
    assert run.returncode == 0, run.stdout + run.stderr
    assert versions.report(good)["passed"]  # type: ignore[index]
    # 6. promotion under load: requests in flight the whole time, analyses queued before it
    specimen = create_specimen(technologist, patient, {"accession": "LOOP-AFTER", "collected_by": "t"})
    queued = upload_images(technologist, specimen, validated(smear_paths(16)[12:16]), [MODEL])
    with Load(frames[0].read_bytes()) as load:
        call_command("promote_model", model=MODEL, model_version=good, by=admin_user.username)
        while load.versions.count(good) < 3 and not load.errors:
            load.stop.wait(0.1)
    assert not load.errors and set(load.versions) == {shipped, good} and load.versions[-1] == good
    assert jobs.run_queued() == {"done": 4}
    assert {Analysis.objects.get(image=i).model_version for i in queued} == {good}
    assert not any(p.name != f"{MODEL}.mar" for p in loop["store"].glob("*.mar"))  # TorchServe's copy removed
    entry = next(m for m in tech_client.get("/api/models/").json() if m["name"] == MODEL)
    assert entry["default_version"] == good and set(entry["loaded_versions"]) == {shipped, good}
    # 7. TorchServe restarted (as make run does after a crash): the promoted default is restored
    info = loop["info"]
    ports = {
        **free_ports(),
        "inference": int(info.inference_url.rsplit(":", 1)[1]),
        "management": int(info.management_url.rsplit(":", 1)[1]),
        "metrics": int(info.metrics_url.rsplit(":", 1)[1]),
    }
    stop(info=info)
    loop["info"] = start(loop["store"], [MODEL], workdir=info.workdir, ports=ports, torch_threads=1)
    assert restore(loop["info"], loop["store"]) == [f"{MODEL}={good}"]
    (restarted,) = _upload_and_run(technologist, specimen, smear_paths(18)[17:18])
    assert restarted.status == "done" and restarted.model_version == good
    # 8. rollback under load: one step back to the shipped version
    with Load(frames[1].read_bytes()) as load:
        call_command("rollback_model", model=MODEL, by=admin_user.username)
        while load.versions[-1:] != [shipped] and not load.errors:
            load.stop.wait(0.1)
    assert not load.errors
    (after,) = _upload_and_run(technologist, specimen, smear_paths(17)[16:17])
    assert after.status == "done" and after.model_version == shipped
    actions_logged = list(AuditEvent.objects.filter(action__startswith="model.").values_list("action", "data"))
    assert [a for a, _ in actions_logged if a in ("model.promote", "model.rollback")] == [
        "model.rollback",
        "model.promote",
    ]
    assert any(a == "model.switch_refused" and d["action"] == "promote" for a, d in actions_logged)


CELLS = "wbc_cells"


def _cell_candidate(versions: Versions, work: Path) -> str:
    """A real candidate archive of the cell model (the shipped typer, a new version) with a passed gate report
    written as ``make gate`` writes it (the gate itself: tests/training/test_update_cells.py)."""
    from model_update.cell_retrain import save_candidate
    from model_update.retrain import pack_candidate, unpack
    from served_model.cell_typer import load_typer

    base = unpack(versions.store_archive(), work)
    card = json.loads((base / "model_card.json").read_text())
    version = versions.next_version(versions.base_version())
    config = json.loads((base / "model" / "model_config.json").read_text())
    pack_candidate(versions, save_candidate(load_typer(base / "model"), version, config), card, version, {"note": "t"})
    report = {"model": CELLS, "kind": "cells", "passed": True, "candidate": {"version": version}, "criteria": []}
    versions.report_path(version).write_text(json.dumps(report))
    shutil.rmtree(work)
    return version


class CellLoad(Load):
    """Requests to the cell model's default version in a loop, from another thread, until stopped."""

    def __init__(self, info: Any, frame: bytes) -> None:
        super().__init__(frame)
        self.info = info

    def _run(self) -> None:
        import requests

        url = f"{self.info.inference_url}/predictions/{CELLS}"
        while not self.stop.is_set():
            r = requests.post(url, data=self.frame, headers=self.info.auth("inference"), timeout=120)
            if r.status_code == 200:
                self.versions.append(r.json()["version"])
            else:
                self.errors.append(f"{r.status_code} {r.text[:200]}")


def test_switches_keep_only_the_default_and_the_rollback_target_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any, admin_user: Any
) -> None:
    """Three promotions and rollbacks of the cell model with a real TorchServe: after each, TorchServe has exactly
    the default and the version rollback returns to loaded (the others unregistered, the demoted one after its
    requests finished: none fails under load); the shipped archive stays in the model store."""
    from serving.versions import served_versions

    store = tmp_path / "model_store"
    store.mkdir()
    for name in (f"{CELLS}.mar", f"{CELLS}.card.json"):
        shutil.copyfile(REPO / "model_store" / name, store / name)
    monkeypatch.setenv(VERSIONS_ENV, str(tmp_path / "model_versions"))
    versions = Versions.of(CELLS, model_store=store)
    shipped = versions.base_version()
    first = _cell_candidate(versions, tmp_path / "w1")
    second = _cell_candidate(versions, tmp_path / "w2")
    info = start(store, [CELLS], workdir=tmp_path / "torchserve", ports=free_ports(), torch_threads=1)
    settings.TORCHSERVE_WORKDIR = info.workdir
    settings.PORTAL_MODEL_STORE = store
    frame = smear_paths(1)[0].read_bytes()

    def loaded() -> list[str]:
        return sorted(served_versions(CELLS, info))

    try:
        assert loaded() == [shipped]
        call_command("promote_model", model=CELLS, model_version=first, by=admin_user.username)
        assert loaded() == sorted([shipped, first])
        with CellLoad(info, frame) as load:  # the shipped version is neither default nor target: unregistered
            call_command("promote_model", model=CELLS, model_version=second, by=admin_user.username)
            while load.versions[-1:] != [second] and not load.errors:
                load.stop.wait(0.1)
        assert not load.errors and load.versions[-1] == second
        assert loaded() == sorted([first, second]) and (store / f"{CELLS}.mar").is_file()
        assert not any(p.name != f"{CELLS}.mar" for p in store.glob("*.mar"))
        with CellLoad(info, frame) as load:  # back to first; its target is the shipped one again: reloaded
            call_command("rollback_model", model=CELLS, by=admin_user.username)
            while load.versions[-1:] != [first] and not load.errors:
                load.stop.wait(0.1)
        assert not load.errors and set(load.versions) <= {first, second}
        assert loaded() == sorted([shipped, first]) and versions.previous_version() == shipped
        call_command("rollback_model", model=CELLS, by=admin_user.username)
        assert loaded() == [shipped]
    finally:
        stop(info=info)
