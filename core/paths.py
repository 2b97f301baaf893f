"""Where the data and offline weights live: ``$LEUKEMIA_SHARED``, else ``../shared`` beside the repository.

They are read at run time and never committed; every module that needs them takes them from here.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REPO", "SHARED", "DATA", "ALL4_ORIGINAL", "PBC", "BCCD", "WEIGHTS"]

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LEUKEMIA_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
ALL4_ORIGINAL = DATA / "all4" / "original"  # the B-ALL frames, one folder per class
PBC = DATA / "pbc"  # single-cell crops, one folder per cell type
BCCD = DATA / "bccd"
WEIGHTS = SHARED / "weights"
