"""The per-model manifest (core.manifest): the registry, the runtimes and the recipes read it, and the files
written from it (serving.manifests: config.properties' models block, the KServe manifests) are current."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import yaml

from core import manifest
from core.registry import CELL_REGISTRY, REGISTRY, served_model_names
from serving import manifests
from serving.torchserve import parse_properties
from tests.conftest import REPO


def test_no_generated_file_is_stale() -> None:
    """Fails when a file written from core/manifest.py was edited by hand or not rewritten: `make manifests`."""
    stale = [str(p.relative_to(REPO)) for p in manifests.stale()]
    assert stale == [], f"stale, run `make manifests`: {stale}"


def test_an_edit_to_the_manifest_makes_the_files_stale() -> None:
    models = manifest.entries()
    edited = [dataclasses.replace(models[0], batching=dataclasses.replace(models[0].batching, batch_size=7))]
    changed = manifests.generated([*edited, *models[1:]])
    assert changed[manifests.CONFIG] != manifests.CONFIG.read_text()
    assert changed[manifests.KSERVE_MODELS] == manifests.KSERVE_MODELS.read_text()  # batching is TorchServe's
    scaled = [dataclasses.replace(models[0], scaling=dataclasses.replace(models[0].scaling, max_replicas=9))]
    assert manifests.generated([*scaled, *models[1:]])[manifests.KSERVE_MODELS] != manifests.KSERVE_MODELS.read_text()


def test_the_generated_files_say_what_the_manifest_says() -> None:
    props = dict(parse_properties(manifests.CONFIG.read_text()))
    per_model = json.loads(props["models"])
    assert list(per_model) == manifest.names() == served_model_names()
    for entry in manifest.entries():
        ((version, cfg),) = per_model[entry.name].items()
        assert version == entry.version and cfg["marName"] == entry.archive and cfg["defaultVersion"] is True
        assert (cfg["batchSize"], cfg["maxBatchDelay"], cfg["minWorkers"], cfg["maxWorkers"]) == (
            entry.batching.batch_size,
            entry.batching.max_batch_delay_ms,
            entry.batching.workers,
            entry.batching.workers,
        )
    services = [d for d in yaml.safe_load_all(manifests.KSERVE_MODELS.read_text()) if d["kind"] == "InferenceService"]
    assert [s["metadata"]["labels"]["leukemia.model"] for s in services] == manifest.names()
    for s, entry in zip(services, manifest.entries(), strict=True):
        predictor = s["spec"]["predictor"]
        assert s["metadata"]["name"] == entry.service
        assert (predictor["maxReplicas"], predictor["scaleTarget"], predictor["containerConcurrency"]) == (
            entry.scaling.max_replicas,
            entry.scaling.scale_target,
            entry.scaling.container_concurrency,
        )
    overlay = yaml.safe_load(manifests.TS_RUNTIME_OVERLAY.read_text())
    patched = [yaml.safe_load(p["patch"]) for p in overlay["patches"]]
    assert [p["spec"]["predictor"]["model"]["storageUri"] for p in patched] == [
        f"pvc://leukemia-models/{name}" for name in manifest.names()
    ]


def test_the_registry_is_the_manifests() -> None:
    assert list(REGISTRY) == manifest.names("frame") and list(CELL_REGISTRY) == manifest.names("cell")
    for entry in manifest.entries():
        spec = REGISTRY.get(entry.name) or CELL_REGISTRY[entry.name]
        assert (spec.version, spec.backbone, spec.input_size) == (entry.version, entry.backbone, entry.input_size)
    assert manifest.get_entry("wbc_cells").handler == "handlers/cells_handler.py"
    assert (REPO / manifest.get_entry("xception_bigru").handler).is_file()


def test_make_reads_the_cell_models_from_the_manifest() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "core.manifest", "cell"], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.split() == manifest.names("cell") == ["wbc_cells"]
    assert "-m core.manifest cell" in (REPO / "mk" / "training.mk").read_text()
