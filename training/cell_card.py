"""The cell-level model's card: its smear gate, its metrics, its data sources; JSON and Markdown.

``python -m training.cell_card`` (part of ``make evaluate``) reads ``artifacts/wbc_cells/``:

- ``model/`` (the typer, :func:`training.cell_typer.save_typer`),
- ``typer_metrics.json`` (:mod:`training.train_cells`: per-class precision/recall, BCCD crops,
  perturbations, temperature, abstention threshold),
- ``finder_metrics.json`` (:mod:`training.cell_eval`: WBC detection AP, nucleus Dice, timing),
- ``served_metrics.json`` (:mod:`evaluation.cell_served`: every cell metric through the served path, the
  whole image through finder and typer; the card leads with these and labels the typer-on-crops
  figures as such),
- ``cell_labels.json`` (:mod:`evaluation.cell_labels`: the served path against cells labelled by hand),

fits the model's smear gate on smear images of the three kinds it is sent (B-ALL frames, BCCD
frames, PBC single-cell crops: training parts only) against synthetic non-smear images, measures the
gate's accept rates on the validation parts and on unseen negatives, and writes ``card.json`` (valid
under :mod:`core.card`, so ``make archive`` packs it) and ``card.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from PIL import Image

from core.card import CARD_SCHEMA_VERSION, require_gate, validate_card
from core.registry import CellModelSpec, get_cell_spec
from served_model.smear_gate import SmearGate
from training.cell_data import SEED, bccd_split, pbc_split
from training.data import load_split
from training.fit_gate import measure_rates
from training.smear_gate import NEGATIVE_KINDS, fit_smear_gate, synthetic_negatives

__all__ = ["CREDITS", "fit_cell_gate", "cell_gate_test_sets", "build_cell_card", "render_cell_markdown", "main"]

MODEL = "wbc_cells"
FINDER = (
    "classical, torch-free (cells/): a nucleus-stain channel against the image's own background, Otsu "
    "threshold floored above the red-cell level, sizes in units of the red-cell radius measured in the image, "
    "lobe joining and neck-aware watershed, cytoplasm grown around each nucleus; box widening and an "
    "edge-aware score fitted on BCCD training frames (cells/fitted.py)"
)
#: What an engineer (not a haematologist) saw in 80 weak-blast crops drawn at random (seed 0) from the all4
#: validation blocks (artifacts/montage.py in the session that trained 2.0): the weak labels' quality.
WEAK_LABEL_AUDIT = (
    "80 weakly labelled blast crops drawn at random from the validation blocks were inspected by eye (an "
    "engineer, not a haematologist): 61 look like blasts, 10 are not (debris, red cells only, a smudge, one "
    "neutrophil), 9 are uncertain (blurred, clusters)"
)
#: Data sources the card and the portal's about page credit.
CREDITS: list[dict[str, str]] = [
    {
        "data": "PBC (peripheral blood cell images, 8 types)",
        "citation": (
            "A. Acevedo, A. Merino, S. Alférez, Á. Molina, L. Boldú, J. Rodellar. A dataset of microscopic peripheral "
            "blood cell images for development of automatic recognition systems. Data in Brief 30 (2020) 105474, "
            "doi:10.1016/j.dib.2020.105474; Mendeley Data doi:10.17632/snkd93bnjr.1"
        ),
        "licence": "CC BY 4.0",
    },
    {
        "data": "BCCD (blood cell frames with boxes)",
        "citation": (
            "BCCD Dataset, github.com/Shenggan/BCCD_Dataset; white-cell types from the Kaggle "
            "'Blood Cell Images' release"
        ),
        "licence": "MIT",
    },
    {
        "data": "B-ALL frames (the blast type's weak labels, from frame labels)",
        "citation": (
            "M. Aria, M. Ghaderzadeh, D. Bashash, H. Abolghasemi, F. Asadi, A. Hosseini. Acute Lymphoblastic "
            "Leukemia (ALL) image dataset. Kaggle, 2021. doi:10.34740/KAGGLE/DSV/2175623"
        ),
        "licence": "not stated; research use",
    },
    {
        "data": "BCCD nucleus/cytoplasm masks",
        "citation": (
            "P. P. Banik, R. Saha, K.-D. Kim. An automatic nucleus segmentation and CNN model based classification "
            "method of white blood cell. Expert Systems with Applications 149 (2020) 113211"
        ),
        "licence": "MIT",
    },
]


def _open(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def fit_cell_gate(seed: int = 0) -> SmearGate:
    """The gate, fitted on the training parts of the three kinds of input (one colour view each)."""
    all4 = [_open(s.path) for s in load_split(None).train[::2]]
    bccd_train, _ = bccd_split()
    pbc_train, _ = pbc_split()
    extra = [_open(f.image) for f in bccd_train] + [_open(s.path) for s in pbc_train[::4]]
    gate = fit_smear_gate(all4, extra_positives=extra, n_negatives=900, seed=seed)
    gate.info["fitted_on"] = (
        f"{len(all4)} B-ALL training frames (every 2nd; +1 random colour view each), {len(bccd_train)} BCCD training "
        f"frames and {len(pbc_train[::4])} PBC training crops (every 4th), 900 synthetic non-smear images "
        f"({', '.join(NEGATIVE_KINDS)}; seed {seed})"
    )
    return gate


def cell_gate_test_sets(seed: int = 777) -> dict[str, tuple[bool, Any]]:
    """name -> (should_accept, image iterator factory), none of it seen by :func:`fit_cell_gate`."""
    all4_val = [s.path for s in load_split(None).val]
    _, bccd_val = bccd_split()
    _, pbc_val = pbc_split()
    negs = list(synthetic_negatives(270, seed=seed))
    sets: dict[str, tuple[bool, Any]] = {
        "all4_val_frames": (True, lambda: (_open(p) for p in all4_val)),
        "bccd_val_frames": (True, lambda: (_open(f.image) for f in bccd_val)),
        "pbc_val_crops": (True, lambda: (_open(s.path) for s in pbc_val)),
    }
    for kind in NEGATIVE_KINDS:
        sets[f"negative_{kind}"] = (False, lambda kind=kind: (im for k, im in negs if k == kind))  # type: ignore[misc]
    return sets


def build_cell_card(
    spec: CellModelSpec,
    model_config: dict[str, Any],
    typer: dict[str, Any],
    finder: dict[str, Any],
    gate: dict[str, Any],
    gate_rates: dict[str, Any],
    served: dict[str, Any] | None = None,
    hand_labels: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card (validated, gate required) from the registry spec and the measured metrics."""
    card = {
        "schema_version": CARD_SCHEMA_VERSION,
        "name": spec.name,
        "version": spec.version,
        "kind": "cells",
        "architecture": {
            "finder": FINDER,
            "typer_backbone": spec.backbone,
            "crop_margin": spec.crop_margin,
        },
        "input_size": spec.input_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "interpolation": "bilinear",
        "classes": list(spec.classes),
        "stain_normalization": None,
        # fitted by training.cell_typer_eval on the PBC validation split (model_config.json records the same)
        "temperature": float(typer["calibration"]["temperature"]),
        "abstain_threshold": float(typer["abstention"]["threshold"]),
        "smear_gate": gate,
        "init_weights": dict(model_config.get("init") or {}),
        "training": {
            "typer": model_config.get("training", {}),
            "split": {"seed": SEED, "pbc": "per image, stratified per class", "bccd": "per frame, by name hash"},
        },
        "metrics": {
            "served": served or {},
            "hand_labels": hand_labels or {},
            "typer": typer,
            "finder": finder,
            "smear_gate": gate_rates,
        },
        "weak_labels": {
            "rule": "training.cell_weak.weak_label: a white cell of a malignant (Early/Pre/Pro) frame is a blast "
            "unless the 8-type typer is >= 0.9 sure it is a granulocyte; a Benign frame's cell is a lymphocyte "
            "(hematogones) unless the 8-type typer is >= 0.9 sure of another normal type",
            "audit": WEAK_LABEL_AUDIT,
        },
        "credits": CREDITS,
        "intended_use": (
            "Decision support for trained haematology laboratory staff: white cells of a Giemsa/May-Grünwald-Giemsa "
            "stained peripheral blood smear field of view located, outlined and pre-classified into eight normal types "
            "and blast for a differential, every cell to be confirmed or reclassified by a technologist. Not a "
            "diagnosis."
        ),
        "limitations": [
            "Normal cell types learned from one analyser and lab (PBC, CellaVision DM96, healthy donors) plus BCCD "
            "crops. The blast type is learned from weak labels only: the cells of B-ALL frames (one lab, one camera, "
            "lymphoblasts of B-ALL, 15-45 px per cell) against Benign frames' cells; no single-cell blast image with a "
            "cell-level label was available, so its cell-level sensitivity on sharp images from another lab and on "
            "myeloblasts is not measured here. Other abnormal cells are typed as the nearest type or abstained on.",
            "An exactly 224x224 upload is taken as a 4:3 camera frame squashed to a square (the B-ALL data set's "
            "format) and widened by 4/3 before finding and typing (core.aspect); boxes are reported in the upload's "
            "pixels.",
            "The cell finder is classical (stain colour, thresholds, watershed), tuned on BCCD frames; other "
            "magnifications and stains shift its thresholds.",
            "Not clinically validated.",
        ],
    }
    return require_gate(validate_card(card))


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, (int, float)) else "n/a"


def _f(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "n/a"


def _served_lines(served: dict[str, Any]) -> list[str]:
    """The served path's numbers: the card's headline."""
    if not served:
        return []
    a4, pbc, bccd = (served.get(k) or {} for k in ("all4_val", "pbc_val", "bccd_val"))
    lines = [
        "### Served path: the whole uploaded image through finder and typer",
        "",
        f"Measured by `python -m evaluation.cell_served` on `handlers.cell_runtime.CellPipeline`, the code TorchServe "
        f"runs, on one validation image in {served.get('definitions', {}).get('every', 1)} (1: all). WBC AP and "
        "nucleus Dice below (Cell finder) are the served finder on whole BCCD frames too.",
        "",
    ]
    if a4:
        lines += [
            f"- **Blast share separates B-ALL from Benign frames** (all4 validation blocks, {a4['frames']} frames, "
            f"split by block as the frame models): AUC **{_f(a4['auc_blast_share'])}** for the share of white cells "
            f"typed blast, {_f(a4['auc_mean_blast_probability'])} for their mean blast probability.",
            "",
            "| frame class | frames | white cells / frame | blast share (mean / median) | no white cell | "
            "white-cell labels |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in a4["per_class"].items():
            mix = ", ".join(f"{k} {v}" for k, v in r["white_cell_labels"].items())
            lines.append(
                f"| {name} | {r['frames']} | {r['white_cells_per_frame']} | {_f(r['blast_share_mean'])} / "
                f"{_f(r['blast_share_median'])} | {r['frames_without_white_cells']} | {mix} |"
            )
        lines.append("")
    if pbc:
        lines += [
            f"- **PBC validation images uploaded whole** ({pbc['images']}; the found cell nearest the centre): "
            f"accuracy **{_f(pbc['served_accuracy'])}** (argmax; {pbc['served_no_cell_found']} without a cell found, "
            f"{_pct(pbc['served_abstained'])} abstained); normal cells called blast: "
            f"{_pct(pbc['served_called_blast'])} "
            f"(white cells {_pct(pbc['served_white_called_blast'])}).",
            f"- **PBC validation images shrunk to the B-ALL frames' resolution** ({pbc['small_side_px']} px, the cell "
            f"20-30 px; typed as crops): called blast {_pct(pbc['small_called_blast'])} (white cells "
            f"{_pct(pbc['small_white_called_blast'])}), accuracy {_f(pbc['small_accuracy'])}.",
            "",
            "| PBC type | n | served recall | served called blast | shrunk called blast |",
            "|---|---|---|---|---|",
        ]
        for name, r in pbc["per_class"].items():
            lines.append(
                f"| {name} | {r['n']} | {_f(r['served_recall'])} | {_pct(r['served_called_blast'])} | "
                f"{_pct(r['small_called_blast'])} |"
            )
        lines.append("")
    if bccd:
        lines += [
            f"- **BCCD validation frames** ({bccd['frames']}): type accuracy of the annotated white cell "
            f"**{_f(bccd['served_type_accuracy'])}** over {bccd['typed_frames']} single-type frames (a cell not found "
            f"counts as wrong); {bccd['white_cells_called_blast']} of {bccd['white_cells_found']} white cells found "
            "called blast.",
            "",
        ]
    return lines


#: The hand-labelled measures the card shows: (what, key in evaluation.cell_labels' result).
HAND_LABEL_ROWS = [
    ("Finder: found white cells that are one white cell (unsure left out)", "finder_precision_all_frames"),
    ("Finder: the same, unsure counted as wrong", "finder_precision_unsure_as_wrong"),
    ("Not a cell, counted as a white cell (typed or unclassified)", "not_a_cell_counted_white_incl_unclassified"),
    ("Blast called: blast_like cells (sensitivity)", "blast_calls_among_blast_like"),
    ("Blast called: lymphoid cells of Benign frames (1 - specificity)", "blast_calls_among_lymphoid_benign"),
    ("Blast called: other white cells (granulocytes, monocytes)", "blast_calls_among_other_white"),
    ("Blast called: not a cell", "blast_calls_among_not_a_cell"),
]


def _hand_label_lines(labels: dict[str, Any]) -> list[str]:
    """The served path against the cells labelled by hand (evaluation.cell_labels)."""
    if not labels:
        return []
    by_class = ", ".join(f"{n} {c}" for c, n in labels.get("frames_by_class", {}).items())
    cats = ", ".join(f"{c} {n}" for c, n in labels.get("labelled_by_category", {}).items())
    lines = [
        "### Hand-labelled cells (served path)",
        "",
        f"{labels['labelled_cells']} cells the served pipeline found on {labels['frames']} all4 validation frames "
        f"({by_class} frames), labelled by eye from blind montages (frame class and model answer hidden; "
        "`python -m evaluation.cell_labels --montage DIR` redraws them) by an engineer, not a haematologist: "
        f"{cats}. A lymphoid-looking cell is blast_like on a malignant frame and lymphoid on a Benign one (at 20 "
        "px the labeller cannot tell a lymphoblast from a hematogone), so the blast figures still take the frame's "
        "class as truth, but only on cells checked to be one white cell. Measured by "
        "`python -m evaluation.cell_labels` "
        f"(served boxes matched to the labelled ones at IoU >= {labels.get('iou', 0.5)}; "
        f"{labels['matched']} matched). Intervals: Wilson 95%, and a bootstrap over blocks (cells of one frame, "
        "frames of one block are not independent); the validation set has 3 Benign blocks.",
        "",
        "| measure | count | share | Wilson 95% | block bootstrap 95% |",
        "|---|---|---|---|---|",
    ]
    for what, key in HAND_LABEL_ROWS:
        r = labels.get(key)
        if r:
            (wl, wh), (bl, bh) = r["wilson95"], r["cluster_bootstrap95"]
            lines.append(
                f"| {what} | {r['count']}/{r['of']} | {_f(r['share'])} | {_f(wl)}-{_f(wh)} | "
                f"{_f(bl)}-{_f(bh)} ({r['clusters']} blocks) |"
            )
    return lines + [""]


def _blast_lines(typer: dict[str, Any], card: dict[str, Any]) -> list[str]:
    weak = typer.get("all4_weak_val")
    if not weak:
        return []
    weak_labels = card.get("weak_labels", {})
    return [
        "### The blast type on weakly labelled cells (typer on the found cells' crops)",
        "",
        f"{weak['cells']} cells found on the all4 validation blocks ({weak['weak_blast']} weakly blast, "
        f"{weak['benign_frame_cells']} from Benign frames): blast-vs-rest AUC {_f(weak['blast_auc_vs_weak_labels'])}; "
        f"weak blasts called blast {_pct(weak['weak_blast_called_blast'])} "
        f"({_pct(weak['weak_blast_called_blast_accepted'])} above the abstention threshold); Benign-frame cells "
        f"called blast {_pct(weak['benign_frame_cells_called_blast'])}. The labels come from the frames (noisy).",
        "",
        f"Weak labels: {weak_labels.get('rule', '')}. Audit: {weak_labels.get('audit', '')}.",
        "",
    ]


def _typer_lines(typer: dict[str, Any]) -> list[str]:
    pbc, bccd, cal, ab = (typer.get(k, {}) for k in ("pbc_val", "bccd_val", "calibration", "abstention"))
    lines = [
        "### Cell typer on ground-truth crops (not the served path)",
        "",
        f"PBC validation split ({pbc.get('n')} crops, 8 types): accuracy **{_f(pbc.get('accuracy'))}**, "
        f"macro-F1 {_f(pbc.get('macro_f1'))}. BCCD validation crops from another lab ({bccd.get('n')} white cells, "
        f"ground-truth boxes): accuracy **{_f(bccd.get('accuracy_argmax8'))}** (argmax over all types).",
        "",
        "| type | precision | recall | F1 | PBC val support |",
        "|---|---|---|---|---|",
    ]
    for name, m in pbc.get("per_class", {}).items():
        lines.append(f"| {name} | {_f(m['precision'])} | {_f(m['recall'])} | {_f(m['f1'])} | {m['support']} |")
    lines += ["", "Under colour perturbations (accuracy; change from the original):", ""]
    lines += ["| perturbation | PBC val | change | BCCD val | change |", "|---|---|---|---|---|"]
    for name, m in typer.get("perturbations", {}).items():
        lines.append(
            f"| {name} | {_f(m['pbc_accuracy'])} | {m['pbc_delta']:+.3f} | {_f(m['bccd_accuracy_argmax8'])} | "
            f"{m['bccd_delta_argmax8']:+.3f} |"
        )
    lines += [
        "",
        f"Calibration: temperature {_f(cal.get('temperature'), 4)} fitted on {cal.get('fitted_on')}; ECE on PBC val "
        f"{_f(cal.get('pbc_val_ece_before'))} -> {_f(cal.get('pbc_val_ece_after_cross_fitted_2fold'))} (2-fold "
        f"cross-fitted), on BCCD val {_f(cal.get('bccd_val_ece_before'))} -> {_f(cal.get('bccd_val_ece_after'))}. "
        f"Abstention under top probability {_f(ab.get('threshold'))}: on PBC val coverage "
        f"{_pct(ab.get('pbc_val', {}).get('coverage'))}, error {_pct(ab.get('pbc_val', {}).get('error_all'))} -> "
        f"{_pct(ab.get('pbc_val', {}).get('error_accepted'))} on the cells it labels.",
        "",
    ]
    return lines


def _finder_lines(finder: dict[str, Any]) -> list[str]:
    lines = [
        "### Cell finder",
        "",
        "| BCCD frames | WBC AP@0.5 | recall | precision | mean IoU | nucleus Dice (mean / pooled) "
        "| cell Dice (mean / pooled) |",
        "|---|---|---|---|---|---|---|",
    ]
    for part in ("bccd_val", "bccd_train"):
        r = finder.get(part)
        if not r:
            continue
        det, seg = r["detection"], r["segmentation"]
        w, nu, ce = det["wbc"], seg["nucleus"], seg["cell"]
        lines.append(
            f"| {part.removeprefix('bccd_')} ({det['frames']}) | **{_f(w['ap50'])}** | {_f(w['recall'])} | "
            f"{_f(w['precision'])} | {_f(w['mean_iou_matched'])} | **{_f(nu['dice_mean'])}** / {_f(nu['dice_pooled'])} "
            f"| {_f(ce['dice_mean'])} / {_f(ce['dice_pooled'])} |"
        )
    val = finder.get("bccd_val", {}).get("detection", {}).get("platelet")
    if val:
        lines += ["", f"Platelets (BCCD val): AP@0.5 {_f(val['ap50'])}: not reliably found (listed when found)."]
    agree, timing = finder.get("all4_segmented_agreement"), finder.get("timing")
    if agree:
        lines += [
            "",
            f"B-ALL frames vs the data set's own segmentation ({agree['frames']} frames): "
            f"{_pct(agree['nucleus_inside_segmented_mean'])} of the nucleus pixels found lie in its foreground; "
            f"Dice of the cell masks against it {_f(agree['cell_dice_vs_segmented_mean'])} (it is a colour "
            "threshold, not a per-cell outline).",
        ]
    if timing:
        lines += [
            "",
            f"Finder time per {timing['image_size']} frame: p50 {timing['p50_ms']} ms, p95 {timing['p95_ms']} ms.",
        ]
    lines += ["", "Definitions: " + "; ".join(f"{k}: {v}" for k, v in finder.get("definitions", {}).items()), ""]
    return lines


def render_cell_markdown(card: dict[str, Any]) -> str:
    """The human-readable card (model_store/wbc_cells.md)."""
    m = card["metrics"]
    rates = m.get("smear_gate", {})
    lines = [
        f"# {card['name']} {card['version']}: white cells found, outlined and typed",
        "",
        "> **Decision support only — not a diagnosis.** " + card["intended_use"],
        "",
        "## What it does",
        f"- Finder: {card['architecture']['finder']}.",
        f"- Typer: `{card['architecture']['typer_backbone']}` on {card['input_size']} px crops "
        f"(the cell's box grown by {card['architecture']['crop_margin']:.0%} per side), "
        f"classes {', '.join(card['classes'])}; temperature {card['temperature']:.3f}, "
        f"abstains under top probability {card['abstain_threshold']:.3f}.",
        "",
        "## Measured on the validation parts",
        "",
        *_served_lines(m.get("served", {})),
        *_hand_label_lines(m.get("hand_labels", {})),
        *_blast_lines(m.get("typer", {}), card),
        *_typer_lines(m.get("typer", {})),
        *_finder_lines(m.get("finder", {})),
        "## Smear gate (accept rates)",
        "",
        "| set | n | accepted | should |",
        "|---|---|---|---|",
    ]
    for name, r in rates.items():
        lines.append(f"| {name} | {r['n']} | {_pct(r['accepted'])} | {'accept' if r['should_accept'] else 'refuse'} |")
    lines += ["", "## Data and credits", ""]
    lines += [f"- {c['data']}: {c['citation']} ({c['licence']})" for c in card["credits"]]
    lines += ["", "## Limitations", ""] + [f"- {x}" for x in card["limitations"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gate-only", action="store_true", help="only fit (if needed) and measure the smear gate")
    ap.add_argument("--refit-gate", action="store_true", help="fit the smear gate again even if smear_gate.json exists")
    args = ap.parse_args(argv)
    d = args.artifacts / MODEL
    spec = get_cell_spec(MODEL)
    gate_file = d / "smear_gate.json"  # fitted once; delete it (or --refit-gate) to fit again
    if gate_file.is_file() and not args.refit_gate:
        saved = json.loads(gate_file.read_text())
        gate, rates = SmearGate.from_dict(saved["gate"]), saved["rates"]
        print(f"[{MODEL}] smear gate from {gate_file}", flush=True)
    else:
        t0 = time.time()
        print(f"[{MODEL}] fitting the smear gate ...", flush=True)
        gate = fit_cell_gate(args.seed)
        print(f"[{MODEL}] gate fitted in {time.time() - t0:.0f} s; measuring accept rates ...", flush=True)
        rates = measure_rates(gate, cell_gate_test_sets())
        d.mkdir(parents=True, exist_ok=True)
        gate_file.write_text(json.dumps({"gate": gate.to_dict(), "rates": rates}, indent=2))
    for name, r in rates.items():
        print(f"  {name:28s} n={r['n']:4d} accepted={r['accepted']}", flush=True)
    if args.gate_only:
        return 0
    card = build_cell_card(
        spec,
        json.loads((d / "model" / "model_config.json").read_text()),
        json.loads((d / "typer_metrics.json").read_text()),
        json.loads((d / "finder_metrics.json").read_text()),
        gate.to_dict(),
        rates,
        json.loads((d / "served_metrics.json").read_text()) if (d / "served_metrics.json").is_file() else None,
        json.loads((d / "cell_labels.json").read_text()) if (d / "cell_labels.json").is_file() else None,
    )
    (d / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    (d / "card.md").write_text(render_cell_markdown(card))
    print(f"[{MODEL}] wrote {d / 'card.json'} and card.md", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
