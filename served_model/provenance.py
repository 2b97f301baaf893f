"""Provenance helpers shared by training, model cards and archiving."""

from __future__ import annotations

import hashlib
import os

__all__ = ["file_sha256"]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (weights, manifests and archives named in model cards)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
