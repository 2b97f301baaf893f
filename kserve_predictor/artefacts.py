"""Where the predictor finds a model: the same .mar archive TorchServe serves, and its batch settings.

A KServe storage layout (``make kserve-layout``, docker/kserve_layout.py; mounted at ``/mnt/models``)
holds ``model-store/<model>.mar`` and ``config/config.properties``; a plain model store (``model_store/``)
holds the archives, with docker/torchserve/config.properties beside the repository. Both are read here:

- :func:`archives`: the ``.mar`` files of a layout or a model store, by model name;
- :func:`unpack`: the model's artefacts out of its archive (a zip): ``model/`` (weights and config) and
  ``model_card.json``, exactly what TorchServe hands the handler as ``model_dir``, so that the runtimes
  load the same bytes. The archive's code is not run: the predictor runs its own copy of the same
  modules (the image's), and :func:`code_drift` names the packed modules that differ from it;
- :func:`batching`: the model's ``batchSize`` and ``maxBatchDelay`` from the ``models`` entry of a
  TorchServe configuration or the ``model_snapshot`` of a layout's, so that the predictor batches as
  TorchServe does, from the one file that says it.

Torch-free: the artefacts are read before any model loads.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path, PurePosixPath

from core.card import CARD_FILE
from handlers.runtime import MODEL_SUBDIR
from serving.torchserve import DEFAULT_CONFIG, parse_properties

__all__ = [
    "LAYOUT_STORE",
    "LAYOUT_CONFIG",
    "REPO",
    "archives",
    "config_for",
    "unpack",
    "code_drift",
    "batching",
]

REPO = Path(__file__).resolve().parent.parent
#: the KServe storage layout's folders (docker/kserve_layout.py)
LAYOUT_STORE = "model-store"
LAYOUT_CONFIG = Path("config") / "config.properties"


def archives(model_dir: Path) -> dict[str, Path]:
    """Model name -> archive: ``<model_dir>/model-store/*.mar`` (a KServe layout) or ``<model_dir>/*.mar``."""
    store = model_dir / LAYOUT_STORE if (model_dir / LAYOUT_STORE).is_dir() else model_dir
    return {mar.stem: mar for mar in sorted(store.glob("*.mar"))}


def config_for(model_dir: Path) -> Path:
    """The TorchServe configuration that goes with ``model_dir``: the layout's own, else the shipped one."""
    layout = model_dir / LAYOUT_CONFIG
    return layout if layout.is_file() else DEFAULT_CONFIG


def _wanted(name: str) -> bool:
    return name == CARD_FILE or (name.startswith(f"{MODEL_SUBDIR}/") and not name.endswith("/"))


def unpack(mar: Path, dest: Path) -> Path:
    """Extract ``model/`` and ``model_card.json`` of the archive ``mar`` into ``dest``; returns ``dest``.

    Raises ValueError for an archive without them or with an entry that would land outside ``dest``."""
    with zipfile.ZipFile(mar) as z:
        names = [n for n in z.namelist() if _wanted(n)]
        for name in names:
            path = PurePosixPath(name)
            if path.is_absolute() or ".." in path.parts:
                raise ValueError(f"{mar.name}: unsafe archive entry {name!r}")
        if CARD_FILE not in names or not any(n.startswith(f"{MODEL_SUBDIR}/") for n in names):
            raise ValueError(f"{mar.name}: no {MODEL_SUBDIR}/ or {CARD_FILE} in the archive")
        z.extractall(dest, names)
    return dest


def code_drift(mar: Path, root: Path = REPO) -> list[str]:
    """The Python modules packed in ``mar`` (``core/``, ``handlers/``, ...) whose bytes differ from, or are
    missing in, the code under ``root``: the predictor runs ``root``'s."""
    drift = []
    with zipfile.ZipFile(mar) as z:
        for name in z.namelist():
            if "/" not in name or not name.endswith(".py"):
                continue  # the handler's entry point at the top, the archive's own files
            local = root / name
            if not local.is_file() or local.read_bytes() != z.read(name):
                drift.append(name)
    return sorted(drift)


def batching(config: Path, model: str) -> tuple[int, float]:
    """``model``'s ``batchSize`` and ``maxBatchDelay`` (in seconds) in the TorchServe configuration
    ``config``: its ``models`` entry, or a layout's ``model_snapshot``; (1, 0.0) where it names none."""
    props = dict(parse_properties(config.read_text()))
    entries = json.loads(props.get("models", "{}"))
    if not entries and "model_snapshot" in props:
        entries = json.loads(props["model_snapshot"]).get("models", {})
    for settings in (entries.get(model) or {}).values():
        return int(settings.get("batchSize", 1)), int(settings.get("maxBatchDelay", 0)) / 1000.0
    return 1, 0.0
