"""The update loop's portal side without a model server: the dataset export (de-identified, by content hash, whole
specimens on one side, versioned), promotion and rollback refused without a passed gate report and audited, the
Models page and /api/models/. The loop against a real TorchServe: tests/portal/test_model_loop_torchserve.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from portal.actions.cells import reclassify_cell
from portal.actions.outcomes import store_cell_outcome
from portal.actions.patients import create_specimen
from portal.actions.signoff import sign_off
from portal.actions.uploads import upload_images
from portal.analyses.models import Cell
from portal.audit.models import AuditEvent
from portal.models_registry.dataset import side_of, specimen_key
from serving.versions import VERSIONS_ENV, Versions
from tests.portal.conftest import smear_paths, validated
from tests.portal.helpers import complete
from tests.portal.test_cells import FRAME_A, answer

pytestmark = pytest.mark.django_db

MODEL = "mobilenetv3_lstm"
REPO = Path(__file__).resolve().parents[2]


def signed_specimens(technologist: Any, reviewer: Any, patient: Any, n: int, per: int = 2, first: int = 0) -> list[Any]:
    """``n`` specimens of ``per`` frames each, every frame's analysis done and signed (reclassified to its folder's
    class, the truth), the first frame's cells stored, one reclassified, the abstained one marked artefact."""
    paths = smear_paths(first + n * per)[first:]
    specimens = []
    for s in range(n):
        specimen = create_specimen(technologist, patient, {"accession": f"ACC-LOOP-{first}-{s}", "collected_by": "t"})
        images = upload_images(technologist, specimen, validated(paths[s * per : (s + 1) * per]), [MODEL])
        for image, path in zip(images, paths[s * per : (s + 1) * per], strict=True):
            complete(image.analyses.get(), "Pre")
            if s == 0 and image is images[0] and hasattr(image, "cell_analysis"):
                assert store_cell_outcome(image.cell_analysis.pk, answer(FRAME_A)) == "done"
                cells = list(Cell.objects.filter(image=image).order_by("index"))
                reclassify_cell(technologist, cells[0], "monocyte")
                reclassify_cell(technologist, cells[2], "artefact")
            sign_off(reviewer, image, decision="reclassify", final_label=path.parent.name, comment="truth")
        specimens.append(specimen)
    return specimens


@pytest.fixture
def cells_on(settings: Any) -> None:
    settings.PORTAL_CELL_MODEL = "wbc_cells"


def test_dataset_is_deidentified_by_hash_split_by_specimen_and_versioned(
    cells_on: None, technologist: Any, reviewer: Any, patient: Any, tmp_path: Path
) -> None:
    specimens = signed_specimens(technologist, reviewer, patient, 4)
    out = tmp_path / "datasets"
    call_command("export_dataset", out=out)
    dataset = out / (out / "LATEST").read_text().strip()
    text = (dataset / "manifest.json").read_text()
    manifest = json.loads(text)
    for secret in (patient.name, patient.mrn, *(s.accession for s in specimens), *(p.name for p in smear_paths(8))):
        assert secret not in text
    assert len(manifest["images"]) == 8
    for record in manifest["images"]:
        data = (dataset / record["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"] == Path(record["file"]).stem
        assert record["reviewer"] == reviewer.username and record["decision"] == "reclassify"
        assert record["model_versions"] == {MODEL: "1.0"}  # the version the answer named (tests/portal/helpers.py)
    sides: dict[str, set[str]] = {}
    for record in manifest["images"] + manifest["cells"]:
        sides.setdefault(record["specimen"], set()).add(record["side"])
    assert all(len(s) == 1 for s in sides.values()) and len(sides) == 4
    assert {specimen_key(s.pk) for s in specimens} == set(sides)
    assert all(side_of(k) == next(iter(v)) for k, v in sides.items())
    # cells: the reclassified one, the artefact, the model's confirmed type; the abstained untyped one left out
    assert sorted((c["decision"], c["label"]) for c in manifest["cells"]) == [
        ("artefact", "artefact"),
        ("confirmed", "lymphocyte"),
        ("reclassified", "monocyte"),
    ]
    # same sign-offs, same id; one more sign-off, a new version
    call_command("export_dataset", out=out)
    assert (out / "LATEST").read_text().strip() == manifest["dataset"]
    signed_specimens(technologist, reviewer, patient, 1, per=1, first=8)
    call_command("export_dataset", out=out)
    assert (out / "LATEST").read_text().strip() != manifest["dataset"]
    assert AuditEvent.objects.filter(action="dataset.export").count() == 3


def test_a_stored_image_that_changed_stops_the_export(
    technologist: Any, reviewer: Any, patient: Any, tmp_path: Path, settings: Any
) -> None:
    (specimen,) = signed_specimens(technologist, reviewer, patient, 1, per=1)
    image = specimen.images.get()
    stored = Path(settings.PORTAL_STORAGE_DIR) / image.storage_name
    stored.write_bytes(stored.read_bytes() + b"x")
    with pytest.raises(CommandError, match="does not match its SHA-256"):
        call_command("export_dataset", out=tmp_path / "datasets")
    assert not (tmp_path / "datasets").exists() or not any((tmp_path / "datasets").iterdir())


@pytest.fixture
def versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any) -> Versions:
    """A versions store in tmp beside the shipped model store; TorchServe not running (record only)."""
    monkeypatch.setenv(VERSIONS_ENV, str(tmp_path / "model_versions"))
    settings.TORCHSERVE_WORKDIR = str(tmp_path / "no-torchserve")
    v = Versions.of(MODEL)
    v.root.mkdir(parents=True)
    return v


def _candidate(versions: Versions, version: str, passed: bool | None) -> None:
    """A candidate's files as make retrain and make gate leave them (the archive's bytes are not read here)."""
    versions.archive(version).write_bytes(b"archive")
    card = dict(versions.base_card(), version=version)
    versions.card_path(version).write_text(json.dumps(card))
    if passed is not None:
        report = {
            "model": MODEL,
            "passed": passed,
            "served": {"version": versions.base_version(), "metrics": {}},
            "candidate": {"version": version, "metrics": {}},
            "criteria": [
                {"name": "macro_f1_max_drop", "value": 0.951 if passed else 0.9, "limit": ">= 0.945", "passed": passed}
            ],
            "finished": "2026-12-07T00:00:00Z",
        }
        versions.report_path(version).write_text(json.dumps(report))


def test_promotion_and_rollback_need_a_passed_gate_report_and_are_audited(versions: Versions, admin_user: Any) -> None:
    base = versions.base_version()
    _candidate(versions, "9.1", passed=None)
    _candidate(versions, "9.2", passed=False)
    _candidate(versions, "9.3", passed=True)
    with pytest.raises(CommandError, match="no gate report"):
        call_command("promote_model", model=MODEL, model_version="9.1", by=admin_user.username)
    with pytest.raises(CommandError, match="failed"):
        call_command("promote_model", model=MODEL, model_version="9.2", by=admin_user.username)
    with pytest.raises(CommandError, match="nothing to roll back"):
        call_command("rollback_model", model=MODEL, by=admin_user.username)
    assert versions.default_version() == base
    assert AuditEvent.objects.filter(action="model.switch_refused").count() == 3
    call_command("promote_model", model=MODEL, model_version="9.3", by=admin_user.username)
    assert versions.default_version() == "9.3" and versions.previous_version() == base
    promoted = AuditEvent.objects.get(action="model.promote")
    assert promoted.actor == admin_user and promoted.data["report"] == "gate-9.3.json"
    assert promoted.data["from"] == base and promoted.data["to"] == "9.3"
    call_command("rollback_model", model=MODEL, by="someone")
    assert versions.default_version() == base
    rolled = AuditEvent.objects.get(action="model.rollback")
    assert rolled.actor is None and rolled.data["operator"] == "someone" and rolled.data["to"] == base
    with pytest.raises(CommandError, match="nothing to roll back"):
        call_command("rollback_model", model=MODEL, by="someone")


def test_models_page_and_api_list_versions_default_card_and_gate(
    versions: Versions, admin_user: Any, tech_client: Client
) -> None:
    _candidate(versions, "9.3", passed=True)
    call_command("promote_model", model=MODEL, model_version="9.3", by=admin_user.username)
    body = tech_client.get("/api/models/").json()
    entry = next(m for m in body if m["name"] == MODEL)
    assert entry["default_version"] == "9.3" and entry["previous_version"] == versions.base_version()
    assert entry["loaded_versions"] is None  # TorchServe not running
    by_version = {v["version"]: v for v in entry["versions"]}
    assert by_version["9.3"]["default"] and by_version["9.3"]["gate"]["passed"]
    assert by_version[versions.base_version()]["shipped"] and by_version[versions.base_version()]["card"]["temperature"]
    assert entry["history"][0]["action"] == "promote"
    page = tech_client.get("/models/").content.decode()
    assert 'class="default-version">9.3<' in page and "gate-9.3.json" in page
    assert Client().get("/api/models/").status_code in (401, 403)
