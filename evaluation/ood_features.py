"""Each frame model's served outputs on same-source and other-source images, computed once and cached.

``python -m evaluation.ood_features`` runs every frame model exactly as it is served: the handler's
:class:`handlers.runtime.ModelRuntime` built from the committed archive (``model_store/<model>.mar``), its
decoding (:meth:`~handlers.runtime.ModelRuntime.prepare` on the encoded image bytes, as a request row),
its preprocessing and its selected forward runtime, batched; and the smear gate of its card on the same
decoded image and pooled features. Per model and source it writes
``artifacts/ood/<model>/<source>.npz``: logits, pooled (penultimate) features, whether the smear gate
accepted the image, the frames' labels (-1 where they have none) and ids. A source already cached for
the same archive (sha256 of its ``model/``) is not recomputed.

The sources (:func:`sources`), the fixed choice the out-of-distribution fit and its report read
(:mod:`training.ood`):

- ``all4_train`` / ``all4_val``: the B-ALL frames of the block-wise split (:func:`training.data.load_split`),
  the training blocks (what the score is fitted on) and the validation blocks (what its threshold keeps);
- ``bccd``: BCCD frames (640x480, another lab, camera and stain; healthy-donor white cells);
- ``pbc_cells``: PBC single-cell crops (CellaVision, healthy donors), 20 per cell type;
- ``pbc_mosaic``: 2x2 mosaics of four PBC crops (a field with several normal white cells);
- ``val_<shift>``: a fixed third of the validation frames under a shift of scale (``zoom_in``: the central
  half enlarged, ``zoom_out``: four copies at half size), ``blur`` (Gaussian, radius 2), stain (``hed``:
  a fixed HED stain change; ``hue_shift``), and camera response (``gamma``, ``white_balance``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from core.paths import BCCD, PBC, REPO
from core.registry import model_names
from training.ood_cache import CACHE_DIR

__all__ = ["sources", "main"]

_SEED = 0
_PBC_PER_TYPE = 20
_MOSAICS = 60
_VAL_SHIFT_EVERY = 3  # every third validation frame (sorted by path) for the shifted copies


def _zoom_in(im: Image.Image) -> Image.Image:
    w, h = im.size
    return im.resize((w, h), Image.Resampling.BICUBIC, box=(w / 4, h / 4, 3 * w / 4, 3 * h / 4))


def _zoom_out(im: Image.Image) -> Image.Image:
    w, h = im.size
    small = im.resize((w // 2, h // 2), Image.Resampling.BICUBIC)
    out = Image.new("RGB", (2 * (w // 2), 2 * (h // 2)))
    for x in (0, w // 2):
        for y in (0, h // 2):
            out.paste(small, (x, y))
    return out


def _hed(im: Image.Image) -> Image.Image:
    """A fixed stain change: haematoxylin x1.2, eosin x0.8, each shifted by 0.2 of its spread."""
    from served_model.stain import hed_to_rgb, rgb_to_hed

    hed = rgb_to_hed(im)
    spread = np.maximum(hed.reshape(-1, 3).std(axis=0), 1e-3)
    return Image.fromarray(hed_to_rgb(hed * np.array([1.2, 0.8, 1.0]) + np.array([0.2, -0.2, 0.0]) * spread))


def _gamma(im: Image.Image) -> Image.Image:
    lut = [int(round(255.0 * (i / 255.0) ** 0.6)) for i in range(256)] * 3
    return im.point(lut)


def _shifts() -> dict[str, Callable[[Image.Image], Image.Image]]:
    from training.augment import PERTURBATIONS

    return {
        "zoom_in": _zoom_in,
        "zoom_out": _zoom_out,
        "blur": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
        "hed": _hed,
        "hue_shift": PERTURBATIONS["hue_shift"],
        "gamma": _gamma,
        "white_balance": PERTURBATIONS["white_balance"],
    }


#: one image of a source: (id, label or -1, a function giving its encoded bytes)
Item = tuple[str, int, Callable[[], bytes]]


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _file(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def _shifted(path: Path, fn: Callable[[Image.Image], Image.Image]) -> Callable[[], bytes]:
    def make() -> bytes:
        with Image.open(path) as im:
            return _png(fn(im.convert("RGB")))

    return make


def _mosaic(paths: Sequence[Path]) -> Callable[[], bytes]:
    def make() -> bytes:
        tiles = []
        for p in paths:
            with Image.open(p) as im:
                tiles.append(im.convert("RGB").resize((360, 360), Image.Resampling.BICUBIC))
        out = Image.new("RGB", (720, 720))
        for k, tile in enumerate(tiles):
            out.paste(tile, ((k % 2) * 360, (k // 2) * 360))
        return _png(out)

    return make


def sources(data: str | None = None) -> dict[str, list[Item]]:
    """Every source's images, in a fixed order (see the module docstring)."""
    from training.data import load_split

    split = load_split(data)
    out: dict[str, list[Item]] = {
        "all4_train": [(s.relpath, s.label, _file(s.path)) for s in split.train],
        "all4_val": [(s.relpath, s.label, _file(s.path)) for s in split.val],
        "bccd": [(p.name, -1, _file(p)) for p in sorted((BCCD / "JPEGImages").glob("*.jpg"))],
    }
    rng = np.random.default_rng(_SEED)
    types = sorted(d.name for d in PBC.iterdir() if d.is_dir())
    per_type = {t: sorted((PBC / t).glob("*.jpg")) for t in types}
    out["pbc_cells"] = [
        (f"{t}/{p.name}", -1, _file(p))
        for t in types
        for p in (per_type[t][i] for i in sorted(rng.choice(len(per_type[t]), _PBC_PER_TYPE, replace=False)))
    ]
    pool = [p for t in types if t != "platelet" for p in per_type[t]]
    out["pbc_mosaic"] = []
    for k in range(_MOSAICS):
        picks = [pool[i] for i in rng.choice(len(pool), 4, replace=False)]
        out["pbc_mosaic"].append((f"mosaic{k:03d}", -1, _mosaic(picks)))
    val_sub = split.val[::_VAL_SHIFT_EVERY]
    for name, fn in _shifts().items():
        out[f"val_{name}"] = [(s.relpath, s.label, _shifted(s.path, fn)) for s in val_sub]
    return out


def _runtime(model: str, store: Path, cache: Path) -> tuple[object, str]:
    import zipfile

    from training.member_outputs import weights_digest

    mar = store / f"{model}.mar"
    digest = weights_digest(mar)
    unpacked = cache / model / "mar"
    with zipfile.ZipFile(mar) as z:
        z.extractall(unpacked, [n for n in z.namelist() if n.startswith("model/") or n == "model_card.json"])
    from handlers.runtime import ModelRuntime

    return ModelRuntime(unpacked), digest


def _gate_statistics(
    source: str, items: Sequence[Item], runtime: Any, cache: Path, encoded: dict[str, list[bytes]]
) -> np.ndarray:
    """The smear gate's image statistics of every image of ``source`` (model-independent: the frame models'
    cards share one gate), computed once and cached in ``<cache>/gate/<source>.npz``."""
    path = cache / "gate" / f"{source}.npz"
    # the image statistics do not depend on the pooled-feature statistics (the one part of the gate that differs)
    gate = {k: v for k, v in runtime.card["smear_gate"].items() if not k.startswith("feature_")}
    ids = [i for i, _, _ in items]
    gate_key = hashlib.sha256(json.dumps(gate, sort_keys=True).encode()).hexdigest()
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if "gate" not in z.files:  # an earlier layout: the key covered the gate and the ids
                old = hashlib.sha256(json.dumps([gate, ids], sort_keys=True).encode()).hexdigest()
                if str(z["key"]) == old:
                    return np.asarray(z["statistics"])
            elif str(z["gate"]) == gate_key:
                row = {str(i): k for k, i in enumerate(z["ids"])}
                if all(i in row for i in ids):  # the same images, or a subset of them
                    return np.asarray(z["statistics"])[[row[i] for i in ids]]
    stats = np.stack([runtime.gate.statistics(runtime.prepare({"body": b}).decoded.image) for b in encoded[source]])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, statistics=stats, ids=np.asarray(ids), gate=np.asarray(gate_key))
    return stats


def extract(
    model: str,
    items_by_source: dict[str, list[Item]],
    store: Path,
    cache: Path,
    encoded: dict[str, list[bytes]],
    batch: int = 16,
) -> None:
    """Compute and cache every source of ``model`` that is not cached for its archive's weights (``encoded``:
    each source's image bytes, made once and shared by the models)."""
    import torch

    from core.errors import RequestError
    from training.member_outputs import weights_digest

    runtime: object | None = None
    digest = weights_digest(store / f"{model}.mar")
    for source, items in items_by_source.items():
        path = cache / model / f"{source}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                if str(z["sha256"]) == digest and len(z["ids"]) == len(items):
                    print(f"{model} {source}: cached", flush=True)
                    continue
        if runtime is None:
            runtime, digest = _runtime(model, store, cache)
        rt: Any = runtime
        t0 = time.time()
        if source not in encoded:
            encoded[source] = [fn() for _, _, fn in items]
        statistics = _gate_statistics(source, items, rt, cache, encoded)
        logits, pooled, accepted, smear = [], [], [], []
        for start in range(0, len(items), batch):
            chunk = encoded[source][start : start + batch]
            prepared = [rt.prepare({"body": b}) for b in chunk]
            lg, po = rt.forward(torch.stack([p.tensor for p in prepared]))
            for k, p in enumerate(prepared):
                try:
                    q = rt.gate_check(p.decoded, po[k], statistics[start + k])
                    accepted.append(True)
                    smear.append(q["smear_score"])
                except RequestError as exc:
                    accepted.append(False)
                    smear.append(float(exc.details.get("score", float("nan"))))
            logits.append(lg.float().numpy())
            pooled.append(po.float().numpy())
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            logits=np.concatenate(logits),
            pooled=np.concatenate(pooled),
            gate_accepted=np.asarray(accepted),
            smear_score=np.asarray(smear, dtype=np.float64),
            labels=np.asarray([lab for _, lab, _ in items], dtype=np.int64),
            ids=np.asarray([i for i, _, _ in items]),
            sha256=np.asarray(digest),
        )
        dt = time.time() - t0
        print(f"{model} {source}: {len(items)} images in {dt:.0f} s ({len(items) / dt:.1f}/s)", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=REPO / "model_store")
    p.add_argument("--cache", type=Path, default=CACHE_DIR)
    p.add_argument("--data", default=None)
    p.add_argument("--model", action="append", help="only these models (repeatable); default: every frame model")
    p.add_argument("--source", action="append", help="only these sources (repeatable)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gate-only", action="store_true", help="only the gate statistics (with the first model's runtime)")
    p.add_argument("--reverse", action="store_true", help="sources in reverse order (a second process beside one)")
    p.add_argument("--train-every", type=int, default=1, help="every n-th training frame only (a busy CPU)")
    args = p.parse_args(argv)
    os.environ.setdefault("LEUKEMIA_GATE_THREAD", "0")
    from handlers.runtime import configure_threads

    configure_threads(args.threads)
    items = sources(args.data)
    if args.source:
        items = {k: v for k, v in items.items() if k in args.source}
    if "all4_train" in items:
        items["all4_train"] = items["all4_train"][:: args.train_every]
    if args.reverse:
        items = dict(reversed(list(items.items())))
    encoded: dict[str, list[bytes]] = {}
    if args.gate_only:
        rt, _ = _runtime((args.model or model_names())[0], args.store, args.cache)
        for source, its in items.items():
            encoded = {source: [fn() for _, _, fn in its]}
            _gate_statistics(source, its, rt, args.cache, encoded)
            print(f"gate statistics {source}: {len(its)}", flush=True)
        return 0
    for model in args.model or model_names():
        extract(model, items, args.store, args.cache, encoded)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
