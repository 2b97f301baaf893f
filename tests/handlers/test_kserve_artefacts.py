"""Where the KServe predictor finds a model (kserve_predictor.artefacts): the .mar archives of a model store or
a KServe storage layout, the artefacts TorchServe hands the handler, and TorchServe's batch settings."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from bench.kserve_server import load_script
from core.card import read_card
from kserve_predictor.artefacts import archives, batching, code_drift, config_for, unpack
from serving.torchserve import DEFAULT_CONFIG, parse_properties
from tests.conftest import REPO

layout = load_script("deploy_kserve_layout", REPO / "docker" / "kserve_layout.py")


def _models_entry() -> dict[str, dict[str, dict[str, int]]]:
    entry: dict[str, dict[str, dict[str, int]]] = json.loads(
        dict(parse_properties(DEFAULT_CONFIG.read_text()))["models"]
    )
    return entry


def test_archives_of_a_model_store_and_of_a_kserve_layout(model_store: Path, tmp_path: Path) -> None:
    found = archives(model_store)
    assert "mobilenetv3_lstm" in found and found["mobilenetv3_lstm"] == model_store / "mobilenetv3_lstm.mar"
    assert config_for(model_store) == DEFAULT_CONFIG
    (root,) = layout.write_layout(model_store, tmp_path / "layout", DEFAULT_CONFIG)[-1:]
    assert archives(root) == {root.name: root / "model-store" / f"{root.name}.mar"}
    assert config_for(root) == root / "config" / "config.properties"


def test_batch_settings_are_torchserves_in_the_base_and_in_a_layout(tmp_path: Path) -> None:
    for name, versions in _models_entry().items():
        (settings,) = versions.values()
        expected = (settings["batchSize"], settings["maxBatchDelay"] / 1000.0)
        assert batching(DEFAULT_CONFIG, name) == expected, name
        generated = tmp_path / f"{name}.properties"
        generated.write_text(layout.kserve_config(DEFAULT_CONFIG.read_text(), name))
        assert batching(generated, name) == expected, name  # the layout's model_snapshot
    assert batching(DEFAULT_CONFIG, "no_such_model") == (1, 0.0)


def test_unpack_gives_the_model_directory_the_handler_gets(model_store: Path, tmp_path: Path) -> None:
    mar = model_store / "mobilenetv3_lstm.mar"
    model_dir = unpack(mar, tmp_path / "m")
    assert sorted(p.name for p in model_dir.iterdir()) == ["model", "model_card.json"]
    with zipfile.ZipFile(mar) as z:
        assert (model_dir / "model" / "weights.safetensors").read_bytes() == z.read("model/weights.safetensors")
    assert read_card(model_dir)["name"] == "mobilenetv3_lstm"
    assert code_drift(mar) == []  # the archive's code is the tree's


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"model/model_config.json": "{}"}, "no model/ or model_card.json"),
        ({"model_card.json": "{}", "model/../../evil.py": "x"}, "unsafe archive entry"),
    ],
)
def test_a_broken_archive_is_refused(tmp_path: Path, entries: dict[str, str], message: str) -> None:
    mar = tmp_path / "broken.mar"
    with zipfile.ZipFile(mar, "w") as z:
        for name, text in entries.items():
            z.writestr(name, text)
    with pytest.raises(ValueError, match=message):
        unpack(mar, tmp_path / "out")
    assert not (tmp_path / "evil.py").exists()


def test_code_drift_names_the_modules_that_differ(model_store: Path, tmp_path: Path) -> None:
    drifted = tmp_path / "drifted.mar"
    with zipfile.ZipFile(model_store / "mobilenetv3_lstm.mar") as src, zipfile.ZipFile(drifted, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data + b"\n# changed\n" if item.filename == "handlers/runtime.py" else data)
    assert code_drift(drifted) == ["handlers/runtime.py"]
