"""Private file storage for uploaded images, heatmaps and annotated images (cells).

Files live under settings.PORTAL_STORAGE_DIR with random names (no user-chosen part), in a
directory no URL maps to; views stream them only after a permission check.

A file belongs to a row: :func:`files_with_rows` writes files and their rows in one transaction and
removes the files unless the transaction commits.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import transaction

__all__ = ["StagedFiles", "delete", "files_with_rows", "list_files", "path_for", "read", "save"]

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


class StagedFiles:
    """The files of one :func:`files_with_rows` block."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def discard(self, name: str) -> None:
        """A file written here that no row will reference (the row was final already): removed once the
        transaction ends, committed or not."""
        transaction.on_commit(lambda: delete(name))  # on a rollback it goes with the others


@contextmanager
def files_with_rows(*files: tuple[str, bytes, str]) -> Iterator[StagedFiles]:
    """Stored files and the rows that reference them, committed together or the files removed.

    ``files`` (kind, data, extension) are written first, under random names (``staged.names``, in order),
    before the transaction (``transaction.atomic``) opens for the block that writes their rows: on SQLite
    a transaction holds the write lock, which no file write should prolong. If anything raises before the
    commit, the transaction rolls back and the files are removed; if the commit itself fails (the
    connection dropped), whether it happened is unknown, so the files stay: a row may reference them,
    and the sweep (portal.jobs.sweep) removes them later if none does. A file given up with
    ``staged.discard(name)`` is removed on commit.
    """
    staged = StagedFiles()
    committing = False
    try:
        for kind, data, extension in files:
            staged.names.append(save(kind, data, extension))
        with transaction.atomic():
            yield staged
            committing = True  # an error after this line comes from the commit: its outcome is unknown
    except BaseException:
        if not committing:
            for name in staged.names:
                delete(name)
        raise
