"""Pack trained models into TorchServe model archives (.mar), reproducibly.

``python -m release.archive --artifacts artifacts --out model_store`` (``make archive``) takes every
``artifacts/<model>/`` written by training (``model/weights.safetensors``, ``model/model_config.json``
from :func:`served_model.network.save_model`, and ``card.json``) and writes ``model_store/<model>.mar``:

- the handler (TorchServe's entry point: ``leukemia_handler.py`` for the frame classifiers,
  ``cells_handler.py`` for the cell-level model) and the served code as whole packages,
  :data:`PACKED_PACKAGES` (``core/``, ``cells/``, ``served_model/``, ``handlers/``): never ``training/``,
  and no list of modules to keep (tests/release/test_served_answers_unchanged.py runs each archive's
  handlers from the archive alone);
- ``model/`` (weights + config), ``model_card.json`` (validated), ``index_to_name.json``;
- ``MAR-INF/MANIFEST.json`` written by ``torch-model-archiver`` itself, with archive version =
  the card's model version.

``torch-model-archiver`` builds the archive layout (``--archive-format no-archive``); this module then
zips it deterministically (sorted entries, fixed timestamps and permissions, the manifest's
``createdOn`` from ``SOURCE_DATE_EPOCH``, default 1980-01-01), so the same inputs give the same bytes.
Beside each .mar it writes ``<model>.card.json`` and ``<model>.md`` (the same file ``make evaluate``
writes: :func:`training.card.render_markdown`, :func:`training.cell_card.render_cell_markdown`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from core.card import require_gate, validate_card
from core.registry import cell_model_names
from served_model.provenance import file_sha256
from training import card as card_module

__all__ = [
    "REPO",
    "HANDLER",
    "CELLS_HANDLER",
    "handler_of",
    "archive_model",
    "archive_all",
    "PACKED_PACKAGES",
    "packed_files",
    "deterministic_zip",
    "read_mar_card",
    "repack",
    "stale_card",
    "stale_code",
    "runtime_requirements",
    "main",
]

REPO = Path(__file__).resolve().parent.parent
HANDLER = REPO / "handlers" / "leukemia_handler.py"
#: The cell-level models' handler (the frame classifiers use HANDLER).
CELLS_HANDLER = REPO / "handlers" / "cells_handler.py"
#: The packages every archive carries, whole: the served code (the handlers and what they import), never training.
PACKED_PACKAGES = ("cells", "core", "handlers", "served_model")
_ZIP_EPOCH_MIN = 315532800  # 1980-01-01, the earliest time a zip entry can hold
#: The serving image's pins (the serving subset of requirements/lock.txt).
SERVING_REQUIREMENTS = REPO / "docker" / "torchserve" / "requirements.txt"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _serving_pins() -> dict[str, str]:
    """Canonical distribution name -> its ``name==version`` line in :data:`SERVING_REQUIREMENTS`."""
    pins = {}
    for line in SERVING_REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pins[_canonical(line.split("==", 1)[0])] = line
    return pins


def runtime_requirements(model: str) -> list[str]:
    """The requirement lines packed as the archive's ``requirements.txt``: the distributions of the forward
    runtime ``model`` serves with (``handlers.backends.SERVED_RUNTIME``, ``RUNTIME_DISTRIBUTIONS``) and
    everything they require, pinned as the serving image pins them; empty for a model served eager.

    TorchServe installs an archive's requirements only with ``install_py_dep_per_model=true``, which needs
    a network; the shipped config keeps it off and the serving images carry these pins already, so the file
    states what the archive needs (and what a per-model install would fetch). Raises ``LookupError`` when a
    required distribution has no pin in the serving requirements.
    """
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    from handlers.backends import RUNTIME_DISTRIBUTIONS, SERVED_RUNTIME

    pins = _serving_pins()
    todo = list(RUNTIME_DISTRIBUTIONS[SERVED_RUNTIME.get(model, "eager")])
    seen: set[str] = set()
    while todo:
        dist = _canonical(todo.pop())
        if dist in seen:
            continue
        if dist not in pins:
            raise LookupError(f"{model}: {dist} is required by its runtime but not pinned in {SERVING_REQUIREMENTS}")
        seen.add(dist)
        for line in requires(dist) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return [pins[d] for d in sorted(seen)]


def packed_files() -> list[Path]:
    """The repository files every archive packs: each Python file of :data:`PACKED_PACKAGES`."""
    return sorted(
        path
        for package in PACKED_PACKAGES
        for path in (REPO / package).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def handler_of(model: str) -> Path:
    """The handler file that serves ``model`` (cell-level models have their own)."""
    return CELLS_HANDLER if model in cell_model_names() else HANDLER


def deterministic_zip(src_dir: Path, dest: Path, epoch: int) -> None:
    """Zip ``src_dir`` into ``dest`` with sorted names, fixed times and modes (weights stored, rest deflated)."""
    stamp = datetime.fromtimestamp(max(epoch, _ZIP_EPOCH_MIN), tz=UTC).timetuple()[:6]
    files = sorted(p for p in src_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w") as z:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(src_dir).as_posix(), date_time=stamp)  # type: ignore[arg-type]
            info.external_attr = 0o644 << 16
            info.create_system = 3
            big_binary = path.suffix in (".safetensors", ".pt", ".bin")
            info.compress_type = zipfile.ZIP_STORED if big_binary else zipfile.ZIP_DEFLATED
            with open(path, "rb") as f, z.open(info, "w", force_zip64=True) as out:
                shutil.copyfileobj(f, out, 1 << 20)
    tmp.replace(dest)


def _log(msg: str) -> None:
    print(msg, flush=True)


def archive_model(artifact_dir: Path, out_dir: Path, epoch: int | None = None) -> Path:
    """Archive one ``artifacts/<model>`` directory into ``out_dir/<model>.mar``; returns its path."""
    artifact_dir, out_dir = Path(artifact_dir), Path(out_dir)
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", _ZIP_EPOCH_MIN)) if epoch is None else epoch
    card = require_gate(validate_card(json.loads((artifact_dir / "card.json").read_text())))
    name, version = card["name"], card["version"]
    config = json.loads((artifact_dir / "model" / "model_config.json").read_text())
    if config["spec"]["name"] != name:
        raise ValueError(f"{artifact_dir}: card is for {name!r}, weights for {config['spec']['name']!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"archive-{name}-") as tmp_str:
        tmp = Path(tmp_str)
        content = tmp / "content"
        for path in packed_files():
            dest = content / path.relative_to(REPO)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
        shutil.copytree(artifact_dir / "model", content / "model", ignore=shutil.ignore_patterns("__pycache__"))
        (content / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        index_to_name = {str(i): c for i, c in enumerate(card["classes"])}
        (content / "index_to_name.json").write_text(json.dumps(index_to_name, indent=2) + "\n")
        export = tmp / "export"
        export.mkdir()
        requirements = runtime_requirements(name)
        if requirements:
            (tmp / "requirements.txt").write_text(
                f"# {name}: its forward runtime's pins (the serving image's); see docs/guides/serving.md\n"
                + "\n".join(requirements)
                + "\n"
            )
        cmd = [
            str(Path(sys.executable).with_name("torch-model-archiver")),
            "--model-name",
            name,
            "--version",
            version,
            "--handler",
            str(content / "handlers" / handler_of(name).name),
            "--extra-files",
            str(content),
            "--export-path",
            str(export),
            "--archive-format",
            "no-archive",
            "--force",
        ]
        if requirements:
            cmd += ["--requirements-file", str(tmp / "requirements.txt")]
        # The archiver stages files in $TMPDIR/<model-name>: give it a private TMPDIR.
        env = dict(os.environ, TMPDIR=str(tmp))
        subprocess.run(cmd, check=True, env=env, cwd=tmp)
        staged = export / name
        manifest_path = staged / "MAR-INF" / "MANIFEST.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["createdOn"] = datetime.fromtimestamp(epoch, tz=UTC).strftime("%d/%m/%Y %H:%M:%S")
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        mar = out_dir / f"{name}.mar"
        deterministic_zip(staged, mar, epoch)
    (out_dir / f"{name}.card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    if name in cell_model_names():
        from training.cell_card import render_cell_markdown  # its gate fitting needs scikit-learn: import late

        (out_dir / f"{name}.md").write_text(render_cell_markdown(card))
    else:
        (out_dir / f"{name}.md").write_text(card_module.render_markdown(card))
    return mar


def read_mar_card(mar: Path) -> dict:
    """The validated model card inside a .mar (also checks the manifest and the handler are there)."""
    with zipfile.ZipFile(mar) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        handler = manifest["model"]["handler"]
        if handler not in names:
            raise ValueError(f"{mar}: handler {handler} missing")
        card = validate_card(json.loads(z.read("model_card.json")))
        if manifest["model"]["modelVersion"] != card["version"]:
            raise ValueError(f"{mar}: archive version {manifest['model']['modelVersion']} != card {card['version']}")
    return card


def _packed_code() -> dict[str, bytes]:
    """The tree's code that :func:`archive_model` packs: archive path -> bytes."""
    return {path.relative_to(REPO).as_posix(): path.read_bytes() for path in packed_files()}


def stale_code(mar: Path) -> list[str]:
    """Python files of ``mar`` that differ from the tree (changed, missing or extra); empty when current."""
    with zipfile.ZipFile(mar) as z:
        tree = _packed_code()
        packed = {n: z.read(n) for n in z.namelist() if n.endswith(".py") and "/" in n}
    names = sorted(set(tree) | set(packed))
    return [n for n in names if tree.get(n) != packed.get(n)]


def _card_beside(mar: Path, packed: bytes) -> bytes:
    """The card :func:`repack` packs: ``<model>.card.json`` beside ``mar`` when it is for the same model and version
    as the ``packed`` one, else ``packed``."""
    beside = mar.parent / f"{mar.stem}.card.json"
    if beside.is_file():
        beside_bytes = beside.read_bytes()
        inner, outer = json.loads(packed), json.loads(beside_bytes)
        if (outer.get("name"), outer.get("version")) == (inner["name"], inner["version"]):
            return beside_bytes
    return packed


def stale_card(mar: Path) -> bool:
    """Whether the card beside ``mar`` (same model and version) holds other values than the one packed in it: fields
    fitted after archiving (``benign_threshold``) that the server would not see until :func:`repack`."""
    with zipfile.ZipFile(mar) as z:
        packed = z.read("model_card.json")
    return json.loads(_card_beside(mar, packed)) != json.loads(packed)


def repack(mar: Path, out_dir: Path | None = None) -> Path:
    """Rebuild ``mar`` with the tree's code around its own weights and card (same bytes for the same inputs).

    For code-only changes: no artifacts/ directory is needed, and weights stay byte-identical. The card packed is
    ``<model>.card.json`` beside ``mar`` when it is there for the same model and version (fields fitted after
    archiving, e.g. ``benign_threshold`` by ``make evaluate-ensemble``, go in with it), else the archive's own.
    """
    mar = Path(mar)
    with tempfile.TemporaryDirectory(prefix="repack-") as tmp_str:
        artifact = Path(tmp_str) / mar.stem
        with zipfile.ZipFile(mar) as z:
            for name in z.namelist():
                if name.startswith("model/") and not name.endswith("/"):
                    dest = artifact / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(z.read(name))
            card_bytes = _card_beside(mar, z.read("model_card.json"))
        (artifact / "card.json").write_bytes(card_bytes)
        out = Path(out_dir or mar.parent)
        # The card documents beside the archive were rendered from the training card: keep them as they are.
        docs = {p: p.read_bytes() for p in (out / f"{mar.stem}.card.json", out / f"{mar.stem}.md") if p.is_file()}
        repacked = archive_model(artifact, out)
        for path, data in docs.items():
            path.write_bytes(data)
        return repacked


def archive_all(artifacts: Path, out_dir: Path, models: Sequence[str] | None = None) -> list[Path]:
    dirs = sorted(d for d in Path(artifacts).iterdir() if (d / "card.json").is_file() and (d / "model").is_dir())
    if models:
        dirs = [d for d in dirs if d.name in set(models)]
        missing = set(models) - {d.name for d in dirs}
        if missing:
            raise FileNotFoundError(f"no artifacts for {sorted(missing)} in {artifacts}")
    if not dirs:
        raise FileNotFoundError(f"no model artifacts (card.json + model/) under {artifacts}")
    out = []
    for i, d in enumerate(dirs, 1):
        t0 = time.perf_counter()
        _log(f"[{i}/{len(dirs)}] {d.name}: packing {d} ...")
        mar = archive_model(d, out_dir)
        card = read_mar_card(mar)
        size = mar.stat().st_size / 1e6
        _log(
            f"[{i}/{len(dirs)}] {d.name}: {mar} v{card['version']} {size:.1f} MB "
            f"sha256 {file_sha256(mar)[:16]} in {time.perf_counter() - t0:.1f} s"
        )
        out.append(mar)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    ap.add_argument("--out", type=Path, default=REPO / "model_store")
    ap.add_argument("--models", nargs="*", help="only these models (default: every artifact found)")
    ap.add_argument(
        "--repack",
        action="store_true",
        help="rebuild every <out>/*.mar (or --models) whose code or card differs from the tree's (its own weights; "
        "the card beside it)",
    )
    args = ap.parse_args(argv)
    if not args.repack:
        archive_all(args.artifacts, args.out, args.models)
        return 0
    mars = sorted(args.out.glob("*.mar"))
    if args.models:
        mars = [m for m in mars if m.stem in set(args.models)]
    for i, mar in enumerate(mars, 1):
        stale = stale_code(mar) + ([f"{mar.stem}.card.json"] if stale_card(mar) else [])
        if not stale:
            _log(f"[{i}/{len(mars)}] {mar.stem}: code and card already current")
            continue
        _log(f"[{i}/{len(mars)}] {mar.stem}: repacking ({len(stale)} file(s) differ: {', '.join(stale[:5])}) ...")
        repack(mar)
        _log(f"[{i}/{len(mars)}] {mar.stem}: sha256 {file_sha256(mar)[:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
