"""Fit the smear gate on the training images and measure its accept / refuse rates.

``python -m training.fit_gate`` writes ``artifacts/smear_gate.json``: the gate (SmearGate.to_dict())
and the measured rates on images it was not fitted on: the validation blocks, the validation
blocks under each colour perturbation, BCCD frames from another lab (odd-numbered half; the
even half is a fitting positive), synthetic non-smear images drawn with a different seed, real
photos it never saw (matplotlib's sample images) and the data set's segmented frames (cells on
black, not a raw smear photograph).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.paths import BCCD
from core.smear_gate import SmearGate
from training.augment import PERTURBATIONS
from training.data import DEFAULT_DATA_ROOT, load_split
from training.smear_gate import NEGATIVE_KINDS, fit_smear_gate, synthetic_negatives

__all__ = ["bccd_frames", "test_sets", "measure_rates", "main"]

BCCD_DIR = BCCD / "JPEGImages"


def bccd_frames(part: str, root: Path = BCCD_DIR) -> list[Path]:
    frames = sorted(root.glob("*.jpg"))
    return frames[0::2] if part == "fit" else frames[1::2]


def _photos() -> dict[str, Image.Image]:
    import matplotlib.cbook as cbook

    out = {}
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        with Image.open(cbook.get_sample_data(name, asfileobj=False)) as im:
            out[name] = im.convert("RGB")
    return out


def test_sets(
    data_root: str | None, seed: int = 777, n_negatives: int = 270
) -> dict[str, tuple[bool, Callable[[], Iterable[Image.Image]]]]:
    """name -> (should_accept, image iterator factory)."""
    split = load_split(data_root)
    val = [s.path for s in split.val]
    sets: dict[str, tuple[bool, Callable[[], Iterable[Image.Image]]]] = {
        "val_original": (True, lambda: (Image.open(p).convert("RGB") for p in val)),
    }
    for name, fn in PERTURBATIONS.items():
        sets[f"val_{name}"] = (True, lambda fn=fn: (fn(Image.open(p).convert("RGB")) for p in val[::3]))  # type: ignore[misc]
    sets["bccd_other_lab"] = (True, lambda: (Image.open(p).convert("RGB") for p in bccd_frames("test")))
    negs = list(synthetic_negatives(n_negatives, seed=seed))
    for kind in NEGATIVE_KINDS:
        sets[f"negative_{kind}"] = (False, lambda kind=kind: (im for k, im in negs if k == kind))  # type: ignore[misc]
    sets["negative_unseen_photos"] = (False, lambda: iter(_photos().values()))
    root = Path(data_root) if data_root else DEFAULT_DATA_ROOT
    seg = sorted((root.parent / "segmented").glob("*/*.jpg"))[::25]
    if seg:
        sets["negative_segmented_frames"] = (False, lambda: (Image.open(p).convert("RGB") for p in seg))
    return sets


def measure_rates(gate: SmearGate, sets: dict[str, tuple[bool, Callable[[], Iterable[Image.Image]]]]) -> dict[str, Any]:
    rates: dict[str, Any] = {}
    for name, (should_accept, factory) in sets.items():
        acc = [gate.evaluate(im).accepted for im in factory()]
        rates[name] = {
            "n": len(acc),
            "accepted": round(float(np.mean(acc)), 4) if acc else None,
            "should_accept": should_accept,
        }
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=None)
    p.add_argument("--out", default="artifacts/smear_gate.json")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.time()
    split = load_split(args.data)
    train = [Image.open(s.path).convert("RGB") for s in split.train]
    extra = [Image.open(p).convert("RGB") for p in bccd_frames("fit")]
    gate = fit_smear_gate(train, extra_positives=extra, n_negatives=900, seed=args.seed)
    gate.info["fitted_on"] = (
        f"{len(train)} training-split smear frames (+1 random colour view each), {len(extra)} BCCD frames "
        f"(even-numbered), 900 synthetic non-smear images ({', '.join(NEGATIVE_KINDS)}; seed {args.seed})"
    )
    fit_s = time.time() - t0
    rates = measure_rates(gate, test_sets(args.data))
    out = {"gate": gate.to_dict(), "rates": rates, "fit_seconds": round(fit_s, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    for name, r in rates.items():
        print(f"{name:32s} n={r['n']:4d} accepted={r['accepted']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
