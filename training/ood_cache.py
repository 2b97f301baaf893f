"""The cache of each frame model's served outputs: written by :mod:`evaluation.ood_features` (which runs the
served runtime), read by the out-of-distribution fit (:mod:`training.ood`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.paths import REPO

__all__ = ["CACHE_DIR", "SHIFTS", "load_source"]

CACHE_DIR = REPO / "artifacts" / "ood"
#: the distribution shifts applied to a fixed third of the validation frames (sources ``val_<shift>``)
SHIFTS = ("zoom_in", "zoom_out", "blur", "hed", "hue_shift", "gamma", "white_balance")


def load_source(model: str, source: str, cache: Path = CACHE_DIR) -> dict[str, np.ndarray]:
    """The cached outputs of ``model`` on ``source`` (``<cache>/<model>/<source>.npz``)."""
    with np.load(cache / model / f"{source}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
