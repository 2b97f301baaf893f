"""release.archive: a .mar that torch-model-archiver built, with a valid card, byte-reproducible."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from core.registry import get_spec
from handlers.backends import SERVED_RUNTIME
from release.archive import (
    REPO,
    SERVING_REQUIREMENTS,
    archive_all,
    packed_files,
    read_mar_card,
    repack,
    runtime_requirements,
    stale_card,
    stale_code,
)


def test_archives_pack_the_served_packages_whole_and_no_training_code() -> None:
    rel = {p.relative_to(REPO).as_posix() for p in packed_files()}
    for needed in (
        "handlers/__init__.py",
        "handlers/leukemia_handler.py",
        "handlers/cells_handler.py",
        "handlers/runtime.py",
        "core/decode.py",
        "core/registry.py",
        "core/card.py",
        "cells/segment.py",
        "served_model/__init__.py",
        "served_model/compat.py",
        "served_model/network.py",
        "served_model/transforms.py",
        "served_model/stain.py",
        "served_model/cell_typer.py",
        "served_model/smear_gate.py",
    ):
        assert needed in rel
    assert {p.split("/")[0] for p in rel} == {"cells", "core", "handlers", "served_model"}  # no training/, serving/


def test_archive_is_valid_and_reproducible(mobilenet_artifact: Path, tmp_path: Path) -> None:
    (first,) = archive_all(mobilenet_artifact.parent, tmp_path / "a", ["mobilenetv3_lstm"])
    (second,) = archive_all(mobilenet_artifact.parent, tmp_path / "b", ["mobilenetv3_lstm"])
    assert first.read_bytes() == second.read_bytes()
    card = read_mar_card(first)
    assert card["name"] == "mobilenetv3_lstm"
    with zipfile.ZipFile(first) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        assert json.loads(z.read("index_to_name.json")) == {"0": "Benign", "1": "Early", "2": "Pre", "3": "Pro"}
        packed_requirements = _requirement_lines(z.read("requirements.txt").decode())
    assert manifest["model"] == {
        "handler": "leukemia_handler.py",
        "modelName": "mobilenetv3_lstm",
        "modelVersion": get_spec("mobilenetv3_lstm").version,
        "requirementsFile": "requirements.txt",
    }
    assert packed_requirements == runtime_requirements("mobilenetv3_lstm")
    assert manifest["archiverVersion"]  # written by torch-model-archiver itself
    assert {
        "model/weights.safetensors",
        "model/model_config.json",
        "model_card.json",
        "served_model/network.py",
    } <= names
    assert not any(n.startswith("training/") for n in names)
    assert (tmp_path / "a" / "mobilenetv3_lstm.card.json").is_file()


def test_archive_refuses_a_bad_card(mobilenet_artifact: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "artifacts" / "mobilenetv3_lstm"
    shutil.copytree(mobilenet_artifact, broken)
    card = json.loads((broken / "card.json").read_text())
    card["temperature"] = -1
    (broken / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="temperature"):
        archive_all(broken.parent, tmp_path / "out")


def test_archive_refuses_a_card_without_a_smear_gate(mobilenet_artifact: Path, tmp_path: Path) -> None:
    import shutil

    from core.card import CardError

    broken = tmp_path / "artifacts" / "mobilenetv3_lstm"
    shutil.copytree(mobilenet_artifact, broken)
    card = json.loads((broken / "card.json").read_text())
    card["smear_gate"] = {}
    (broken / "card.json").write_text(json.dumps(card))
    with pytest.raises(CardError, match="smear gate"):
        archive_all(broken.parent, tmp_path / "out")


def test_make_archive_target(mobilenet_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    proc = subprocess.run(
        ["make", "-s", "archive", f"ARTIFACTS={mobilenet_artifact.parent}", f"MODEL_STORE={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[1/1] mobilenetv3_lstm" in proc.stdout
    read_mar_card(out / "mobilenetv3_lstm.mar")


def test_card_markdown_is_written_beside_the_archive(mobilenet_artifact: Path, tmp_path: Path) -> None:
    from training import card as card_module

    if not hasattr(card_module, "render_markdown"):
        pytest.skip("training.card has no render_markdown")
    archive_all(mobilenet_artifact.parent, tmp_path, ["mobilenetv3_lstm"])
    assert "mobilenetv3_lstm" in (tmp_path / "mobilenetv3_lstm.md").read_text()


def test_repack_keeps_weights_and_card_and_takes_the_tree_code(mobilenet_artifact: Path, tmp_path: Path) -> None:
    (mar,) = archive_all(mobilenet_artifact.parent, tmp_path / "a", ["mobilenetv3_lstm"])
    # An archive whose handler code is out of date (as if the tree had moved on since it was built).
    stale = tmp_path / "stale" / "mobilenetv3_lstm.mar"
    stale.parent.mkdir()
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(stale, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "handlers/runtime.py":
                data += b"\n# old code\n"
            dst.writestr(item, data)
    assert stale_code(stale) == ["handlers/runtime.py"]
    repacked = repack(stale, tmp_path / "b")
    assert stale_code(repacked) == []
    assert repacked.read_bytes() == mar.read_bytes()  # same weights, card and code: the same bytes


def test_repack_packs_the_card_beside_the_archive(mobilenet_artifact: Path, tmp_path: Path) -> None:
    """A field fitted after archiving (the Benign threshold) reaches the archive through the card beside it."""
    (mar,) = archive_all(mobilenet_artifact.parent, tmp_path / "a", ["mobilenetv3_lstm"])
    beside = mar.parent / "mobilenetv3_lstm.card.json"
    card = json.loads(beside.read_text())
    assert "benign_threshold" not in read_mar_card(mar)
    assert not stale_card(mar)
    beside.write_text(json.dumps(card | {"benign_threshold": 0.75}, indent=2, sort_keys=True) + "\n")
    assert stale_card(mar)  # so `make repack` rebuilds it although its code is current
    repacked = repack(mar, tmp_path / "b")
    assert read_mar_card(repacked)["benign_threshold"] == 0.75
    # a card of another version beside it is not taken
    beside.write_text(json.dumps(card | {"version": "9.9", "benign_threshold": 0.5}, sort_keys=True))
    assert not stale_card(mar)
    assert "benign_threshold" not in read_mar_card(repack(mar, tmp_path / "c"))


def test_committed_archives_run_the_tree_code() -> None:
    """Every .mar in model_store/ carries exactly the tree's handler code (`make repack` fixes a failure)."""
    mars = sorted((REPO / "model_store").glob("*.mar"))
    if not mars:
        pytest.skip("no committed archives")
    stale = {m.name: stale_code(m) for m in mars if stale_code(m)}
    assert not stale, f"archives with code that differs from the tree (run `make repack`): {stale}"


def test_committed_archives_carry_the_card_beside_them() -> None:
    """What `make evaluate-ensemble` fits into a card (the Benign threshold) is what TorchServe serves."""
    mars = sorted((REPO / "model_store").glob("*.mar"))
    if not mars:
        pytest.skip("no committed archives")
    stale = [m.name for m in mars if stale_card(m)]
    assert not stale, f"archives whose card differs from the card beside them (run `make repack`): {stale}"


def _requirement_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_runtime_requirements_pin_the_served_runtime_as_the_serving_image_does(tmp_path: Path, monkeypatch) -> None:
    serving = set(_requirement_lines(SERVING_REQUIREMENTS.read_text()))
    for model, runtime in SERVED_RUNTIME.items():
        lines = runtime_requirements(model)
        names = {ln.split("==")[0].lower() for ln in lines}
        assert runtime in names and "onnx" in names, (model, lines)
        assert all("==" in ln for ln in lines) and set(lines) <= serving, (model, lines)
        assert not any(ln.startswith("torch==") and "+cpu" not in ln for ln in lines)  # CPU builds only
    assert runtime_requirements("wbc_cells") == []  # served eager: nothing beyond the image's torch
    lacking = tmp_path / "requirements.txt"
    lacking.write_text("\n".join(ln for ln in sorted(serving) if not ln.startswith("onnxruntime==")) + "\n")
    monkeypatch.setattr("release.archive.SERVING_REQUIREMENTS", lacking)
    with pytest.raises(LookupError, match="onnxruntime"):
        runtime_requirements("xception_bigru")


def test_committed_archives_carry_their_runtime_pins() -> None:
    """Each committed frame-model .mar holds requirements.txt with its runtime's pins (issue 14 item 2)."""
    mars = {m.stem: m for m in sorted((REPO / "model_store").glob("*.mar"))}
    if not mars:
        pytest.skip("no committed archives")
    for model in SERVED_RUNTIME:
        with zipfile.ZipFile(mars[model]) as z:
            manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
            assert manifest["model"].get("requirementsFile") == "requirements.txt", model
            assert _requirement_lines(z.read("requirements.txt").decode()) == runtime_requirements(model), model


def test_the_ensemble_cache_key_follows_the_weights_not_the_card(mobilenet_artifact: Path, tmp_path: Path) -> None:
    """`make evaluate-ensemble` repacks the archives whose card it changed; their cached logits stay valid."""
    from training.member_outputs import weights_digest

    (mar,) = archive_all(mobilenet_artifact.parent, tmp_path / "a", ["mobilenetv3_lstm"])
    beside = mar.parent / "mobilenetv3_lstm.card.json"
    beside.write_text(json.dumps(json.loads(beside.read_text()) | {"benign_threshold": 0.97}, sort_keys=True))
    repacked = repack(mar, tmp_path / "b")
    assert repacked.read_bytes() != mar.read_bytes() and weights_digest(repacked) == weights_digest(mar)
    other = tmp_path / "c.mar"
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(other, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.startswith("model/") and item.filename.endswith(".json"):
                data += b"\n"
            dst.writestr(item, data)
    assert weights_digest(other) != weights_digest(mar)
