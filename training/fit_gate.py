"""Fit the smear gate and measure it on kinds of image it never saw.

``python -m training.fit_gate`` (``make smear-gate``) writes ``artifacts/smear_gate.json``: the gate
(SmearGate.to_dict(), version 2: logistic regression + Gaussian-mixture density of smear statistics)
and its measured accept rates, all on images the measured gate was not fitted on:

- ``unseen_family_<family>``: leave-one-family-out. For each negative family of
  :mod:`training.gate_families` a gate is fitted on the smears and the *other* families, and its
  refusals are counted on that family (images drawn with another seed). These are the numbers for
  "refuses kinds of image it never saw".
- ``unseen_source_<source>``: one smear source left out of the fit (BCCD frames, PBC crops), the
  acceptance of its validation part.
- the shipped gate (fitted on every family and source): acceptance of the validation parts of the
  three smear sources (B-ALL frames, also under each colour perturbation; BCCD frames; PBC crops),
  refusal of new draws of every family and of the issue's regression cases (a grayscale moon
  photograph, a retina fundus image).

Smears (positives): the same training parts the cell model's gate uses (training.cell_card): every
2nd B-ALL training frame, the BCCD training frames, every 4th PBC training crop, each with one random
colour view. ``--cards model_store`` also writes the gate into the frame models' cards there
(``<model>.card.json``: the model's own pooled-feature statistics are kept) and re-renders ``<model>.md``.
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

from served_model.gate_statistics import _hue_sat_hist, _prepare, image_statistics
from served_model.smear_gate import SmearGate
from training.augment import PERTURBATIONS
from training.gate_families import FAMILIES, family_images, regression_images
from training.smear_gate import fit_on_statistics, positive_statistics

__all__ = [
    "DENSITY_COMPONENTS",
    "GateData",
    "gate_data",
    "leave_one_family_out",
    "measure_rates",
    "measure_statistics",
    "render_gate_markdown",
    "update_cards",
    "main",
]

#: Gaussian-mixture components of the smear density (chosen by leave-one-family-out, see model_store/README.md)
DENSITY_COMPONENTS = 3
#: images per negative family, for fitting (seed 0) and for testing (seed 1)
FAMILY_SIZE = 120


def _open(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


class GateData:
    """Statistics of every fitting and test set (computed once, shared by every fit)."""

    def __init__(
        self,
        ref: np.ndarray,
        pos_fit: dict[str, np.ndarray],
        tests: dict[str, tuple[bool, np.ndarray]],
        neg_fit: dict[str, np.ndarray],
    ) -> None:
        self.ref, self.pos_fit, self.tests, self.neg_fit = ref, pos_fit, tests, neg_fit


def gate_data(
    seed: int = 0,
    family_size: int = FAMILY_SIZE,
    every: tuple[int, int, int] = (2, 1, 4),
    val_every: int = 1,
    data_root: str | None = None,
) -> GateData:
    """Load the smear sources (training parts to fit, validation parts to test) and the negative
    families; ``every`` thins the B-ALL, BCCD and PBC training parts, ``val_every`` every test part."""
    from training.cell_data import bccd_split, pbc_split
    from training.data import load_split

    split = load_split(data_root)
    bccd_train, bccd_val = bccd_split()
    pbc_train, pbc_val = pbc_split()
    fit_paths = {
        "ball": [s.path for s in split.train[:: every[0]]],
        "bccd": [f.image for f in bccd_train[:: every[1]]],
        "pbc": [s.path for s in pbc_train[:: every[2]]],
    }
    fit_images = {k: [_open(p) for p in v] for k, v in fit_paths.items()}
    ref = np.mean([_hue_sat_hist(_prepare(im)) for ims in fit_images.values() for im in ims], axis=0)
    pos_fit = {k: positive_statistics(ims, ref, augment_views=1, seed=seed) for k, ims in fit_images.items()}

    def stats(images: Iterable[Image.Image]) -> np.ndarray:
        return np.asarray([image_statistics(im, ref) for im in images])

    val = [_open(s.path) for s in split.val[::val_every]]
    tests: dict[str, tuple[bool, np.ndarray]] = {"ball_val_original": (True, stats(val))}
    for name, fn in PERTURBATIONS.items():
        tests[f"ball_val_{name}"] = (True, stats(fn(im) for im in val[::3]))
    tests["bccd_val"] = (True, stats(_open(f.image) for f in bccd_val[::val_every]))
    tests["pbc_val"] = (True, stats(_open(s.path) for s in pbc_val[::val_every]))
    neg_fit = {}
    for fam in FAMILIES:
        neg_fit[fam] = stats(family_images(fam, family_size, seed=seed))
        tests[f"family_{fam}"] = (False, stats(family_images(fam, family_size, seed=seed + 1)))
    for name, im in regression_images().items():
        tests[f"issue_{name}"] = (False, stats([im]))
    return GateData(ref, pos_fit, tests, neg_fit)


def _fit(
    data: GateData, families: Iterable[str], sources: Iterable[str], density_components: int, seed: int
) -> SmearGate:
    pos = np.concatenate([data.pos_fit[s] for s in sources])
    neg = np.concatenate([data.neg_fit[f] for f in families])
    return fit_on_statistics(pos, neg, data.ref, density_components=density_components, seed=seed)


def measure_statistics(gate: SmearGate, x: np.ndarray) -> np.ndarray:
    """Accepted (bool per row of statistics): the same decision as ``gate.evaluate(image).accepted``."""
    return np.array([gate._score_vector(v) >= gate.threshold for v in x], dtype=bool)


def _rate(acc: np.ndarray, should_accept: bool) -> dict[str, Any]:
    return {"n": int(len(acc)), "accepted": round(float(acc.mean()), 4), "should_accept": should_accept}


def leave_one_family_out(
    data: GateData,
    density_components: int = DENSITY_COMPONENTS,
    seed: int = 0,
    families: Iterable[str] | None = None,
    sources: Iterable[str] = ("bccd", "pbc"),
) -> dict[str, dict[str, Any]]:
    """``unseen_family_<f>``: a gate fitted without family ``f``, measured on ``f``'s test draw, and
    ``smears_without_<f>``: that gate on every smear test set together; ``unseen_source_<s>``: a gate
    fitted without smear source ``s``, measured on its validation part. ``families``: default all."""
    out: dict[str, dict[str, Any]] = {}
    all_sources = list(data.pos_fit)
    smears = np.concatenate([x for accept, x in data.tests.values() if accept])
    for fam in data.neg_fit if families is None else families:
        gate = _fit(data, [f for f in data.neg_fit if f != fam], all_sources, density_components, seed)
        out[f"unseen_family_{fam}"] = _rate(measure_statistics(gate, data.tests[f"family_{fam}"][1]), False)
        out[f"smears_without_{fam}"] = _rate(measure_statistics(gate, smears), True)
    for src in sources:
        gate = _fit(data, list(data.neg_fit), [s for s in all_sources if s != src], density_components, seed)
        out[f"unseen_source_{src}_val"] = _rate(measure_statistics(gate, data.tests[f"{src}_val"][1]), True)
    return out


def measure_rates(gate: SmearGate, sets: dict[str, tuple[bool, Callable[[], Iterable[Image.Image]]]]) -> dict[str, Any]:
    """Accept rates of ``gate`` on image sets (name -> (should_accept, image iterator factory))."""
    rates: dict[str, Any] = {}
    for name, (should_accept, factory) in sets.items():
        acc = [gate.evaluate(im).accepted for im in factory()]
        rates[name] = {
            "n": len(acc),
            "accepted": round(float(np.mean(acc)), 4) if acc else None,
            "should_accept": should_accept,
        }
    return rates


def _fitted_on(data: GateData, seed: int, density_components: int) -> str:
    n = {k: len(v) // 2 for k, v in data.pos_fit.items()}
    return (
        f"{n['ball']} B-ALL training frames (every 2nd), {n['bccd']} BCCD training frames, {n['pbc']} PBC training "
        f"crops (every 4th), each + 1 random colour view; against {sum(len(v) for v in data.neg_fit.values())} "
        f"non-smear images of {len(data.neg_fit)} families ({', '.join(data.neg_fit)}; training.gate_families, "
        f"seed {seed}); logistic regression + {density_components}-component Gaussian mixture of the smear "
        "statistics, each refusing 0.5% of the fitting smears"
    )


_TESTED_ON = (
    "unseen_family_*: a gate fitted without that family, measured on it (leave-one-family-out); "
    "unseen_source_*: a gate fitted without that smear source; every other row: this gate, on validation "
    "parts and new draws (seed + 1) it was not fitted on"
)


def update_cards(store: Path, gate: SmearGate, rates: dict[str, Any]) -> list[Path]:
    """Write ``gate`` and ``rates`` into every frame model's ``<store>/<model>.card.json`` (keeping the
    model's pooled-feature statistics) and re-render ``<model>.md``; returns the cards written."""
    from core.card import validate_card
    from core.registry import model_names
    from training.card import render_markdown

    written = []
    for name in model_names():
        path = store / f"{name}.card.json"
        card = json.loads(path.read_text())
        old = card.get("smear_gate") or {}
        kept = {k: old.get(k) for k in ("feature_mean", "feature_std", "feature_distance_p99")}
        block = gate.to_dict() | {k: v for k, v in kept.items() if v is not None} | {"measured_rates": rates}
        if "feature_distance_val_accept_rate" in old:
            block["feature_distance_val_accept_rate"] = old["feature_distance_val_accept_rate"]
        card["smear_gate"] = block
        validate_card(card)
        SmearGate.from_dict(block)
        path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        md = store / f"{name}.md"
        md.write_text(_replace_section(md.read_text() if md.is_file() else "", render_markdown(card), "## Smear gate"))
        written.append(path)
    return written


def _replace_section(old: str, new: str, heading: str) -> str:
    """``old`` with its ``heading`` section (up to the next ``## ``) taken from ``new`` (all of ``new``
    when ``old`` lacks it): the rest of a card's Markdown stays as it was rendered."""

    def split(text: str) -> tuple[str, str, str]:
        start = text.find(heading + "\n")
        if start < 0:
            return text, "", ""
        end = text.find("\n## ", start + len(heading))
        end = len(text) if end < 0 else end + 1
        return text[:start], text[start:end], text[end:]

    head, section, tail = split(old)
    if not section:
        return new
    return head + split(new)[1] + tail


def render_gate_markdown(doc: dict[str, Any]) -> str:
    """``model_store/smear_gate.md``: how the frame models' gate was fitted and what it was tested on."""
    gate, rates = doc["gate"], doc["rates"]
    info = gate.get("info", {})

    def row(name: str, what: str) -> str:
        r = rates[name]
        verb = "accepted" if r["should_accept"] else "refused"
        share = r["accepted"] if r["should_accept"] else 1 - r["accepted"]
        return f"| {name} | {what} | {r['n']} | {verb} {share:.1%} |"

    lines = [
        "# Smear gate of the frame classifiers",
        "",
        "Generated by `make smear-gate-cards` (`python -m training.fit_gate --cards model_store`); do not edit",
        "by hand.",
        "The same gate is in the four frame models' cards (`smear_gate`, each with its own pooled-feature",
        "statistics); served_model/smear_gate.py scores it with NumPy/SciPy on a 128x128 copy of the image.",
        "",
        "## What it is",
        f"- {len(gate['features'])} image statistics (colour, luminance, texture, dark objects, spatial-frequency",
        "  octaves, orientation, structure-tensor coherence, Laplacian-of-Gaussian energies);",
        "  a logistic regression, and a Gaussian mixture of the smear images' statistics: an image is accepted",
        "  only when the regression scores it >= the threshold *and* its log-density is >= the limit.",
        f"- Threshold {gate['threshold']:.4f}; log-density limit {gate['density']['log_density_limit']:.2f}.",
        f"- Fitted on: {info.get('fitted_on', 'n/a')}.",
        "",
        "## What counts as a smear",
        "Positives are stained peripheral blood smear images from three labs, stains and cameras: the B-ALL",
        "frames (Giemsa, 224 px squashed 4:3 frames), the BCCD frames (640x480, another lab) and the PBC images",
        "(May Grunwald-Giemsa, CellaVision DM96). A PBC image is a field of view of a smear centred on one white",
        "cell, with the red cells around it: a smear image at higher magnification, not an isolated cell, so it is",
        "a positive here as it is for wbc_cells (whose own gate, training/cell_card.py, is fitted on the same three",
        "sources). The issue's 'single cells' to refuse are microscope images of cells outside a smear: the",
        "other_microscopy family (phase-contrast cell, cells segmented onto black, single cells on an empty field).",
        "",
        "## Measured on what it never saw",
        "Leave-one-family-out: for each family a gate is fitted on the smears and the other nine families and",
        "its refusals are counted on that family (a new draw, seed 1). Positive sources: one source left out of",
        "the fit, its validation part.",
        "",
        "| test set | what | n | result |",
        "|---|---|---|---|",
    ]
    lines += [row(f"unseen_family_{f}", FAMILIES[f]) for f in FAMILIES if f"unseen_family_{f}" in rates]
    lines += [
        row("unseen_source_bccd_val", "BCCD validation frames, gate fitted without any BCCD frame"),
        row("unseen_source_pbc_val", "PBC validation crops, gate fitted without any PBC crop"),
        "",
        "The shipped gate (every family and source in the fit) on images it was not fitted on:",
        "",
        "| test set | what | n | result |",
        "|---|---|---|---|",
    ]
    what = {
        "ball_val_original": "B-ALL validation frames (block-wise split)",
        "bccd_val": "BCCD validation frames",
        "pbc_val": "PBC validation crops",
        "issue_moon_grayscale": "issue 13: the grayscale moon photograph (skimage moon)",
        "issue_retina_fundus": "issue 13: a retina fundus image (skimage retina)",
    }
    for name in rates:
        if name.startswith(("unseen_", "smears_without_")):
            continue
        if name.startswith("ball_val_") and name not in what:
            desc = f"B-ALL validation frames (every 3rd), {name.removeprefix('ball_val_')}"
        elif name.startswith("family_"):
            desc = f"new draw (seed 1) of the fitted family {name.removeprefix('family_')}"
        else:
            desc = what.get(name, name)
        lines.append(row(name, desc))
    lines += [
        "",
        "## Limits",
        "- A smear source absent from the fit is not reliably accepted: without PBC crops in the fit only "
        f"{rates['unseen_source_pbc_val']['accepted']:.1%} of them pass (their magnification and layout differ from "
        "fields of view); BCCD frames, fields of view like the B-ALL ones, pass without being fitted on. A new lab "
        "whose images look unlike all three sources needs its images added to the fit.",
        "- The negative families are built from the images bundled with scikit-image, scikit-learn and matplotlib "
        "(one IHC image for tissue; no real fluorescence image loads offline, so fluorescence is rendered from the "
        "IHC nuclei and synthetic blobs): few source images per family, many crops, rescalings and colour changes.",
        "- The statistics describe how an image looks, not what its cells are: smears of other tissues (bone "
        "marrow) or species were not tested (none available offline).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="the B-ALL image folder (default: the shared data set)")
    p.add_argument("--out", default="artifacts/smear_gate.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--density-components", type=int, default=DENSITY_COMPONENTS)
    p.add_argument("--cards", type=Path, default=None, help="also write the gate into <dir>/<frame model>.card.json")
    args = p.parse_args(argv)
    t0 = time.time()
    data = gate_data(args.seed, data_root=args.data)
    stats_s = time.time() - t0
    t1 = time.time()
    gate = _fit(data, list(data.neg_fit), list(data.pos_fit), args.density_components, args.seed)
    fit_s = time.time() - t1
    gate.info.update(
        seed=args.seed, fitted_on=_fitted_on(data, args.seed, args.density_components), tested_on=_TESTED_ON
    )
    rates = leave_one_family_out(data, args.density_components, args.seed)
    for name, (should_accept, x) in data.tests.items():
        rates[name] = _rate(measure_statistics(gate, x), should_accept)
    out = {
        "gate": gate.to_dict(),
        "rates": rates,
        "statistics_seconds": round(stats_s, 1),
        "fit_seconds": round(fit_s, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    for name, r in rates.items():
        print(f"{name:36s} n={r['n']:4d} accepted={r['accepted']:.4f} ({'accept' if r['should_accept'] else 'refuse'})")
    if args.cards:
        for path in update_cards(args.cards, gate, rates):
            print(f"wrote {path}")
        (args.cards / "smear_gate.md").write_text(render_gate_markdown(out))
        print(f"wrote {args.cards / 'smear_gate.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
