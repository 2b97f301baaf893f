"""Private file storage for uploaded images, heatmaps and annotated images (cells).

Files live under settings.PORTAL_STORAGE_DIR with random names (no user-chosen part), in a
directory no URL maps to; views stream them only after a permission check.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.conf import settings

__all__ = ["delete", "list_files", "path_for", "read", "save"]

_KINDS = ("images", "heatmaps", "annotated")  # annotated: the cell model's annotated images


def _root() -> Path:
    return Path(settings.PORTAL_STORAGE_DIR)


def path_for(name: str) -> Path:
    """Absolute path of a stored file; refuses names that are not ours (no traversal)."""
    kind, _, leaf = name.partition("/")
    if kind not in _KINDS or not leaf or "/" in leaf or leaf.startswith(".") or ".." in leaf:
        raise ValueError(f"not a storage name: {name!r}")
    return _root() / kind / leaf


def save(kind: str, data: bytes, extension: str) -> str:
    """Write ``data`` under a fresh random name; returns the storage name ``kind/<hex>.<ext>``."""
    if kind not in _KINDS:
        raise ValueError(f"unknown storage kind {kind!r}")
    directory = _root() / kind
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = f"{kind}/{secrets.token_hex(16)}.{extension.lstrip('.').lower()}"
    target = path_for(name)
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return name


def read(name: str) -> bytes:
    return path_for(name).read_bytes()


def delete(name: str) -> None:
    path_for(name).unlink(missing_ok=True)


def list_files() -> list[tuple[str, float]]:
    """(storage name, modification time) of every stored file; unfinished temp files excluded."""
    out = []
    for kind in _KINDS:
        directory = _root() / kind
        if directory.is_dir():
            for entry in os.scandir(directory):
                if entry.is_file() and not entry.name.startswith("."):
                    out.append((f"{kind}/{entry.name}", entry.stat().st_mtime))
    return out
