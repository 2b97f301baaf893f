"""Model cards: building the JSON shipped inside each .mar (``model_card.json``) and its Markdown rendering.

The schema and its validation are :mod:`core.card`.

The card is the serving-side source of truth for everything that is fitted rather than designed:
temperature, abstention threshold, smear-gate thresholds, metrics. Architecture, input size,
normalisation and classes are copied into it from the registry when the card is built.
"""

from __future__ import annotations

from typing import Any

from core.card import CARD_SCHEMA_VERSION, validate_card
from core.registry import ModelSpec
from training.operating_point import THRESHOLD_WORDS

__all__ = [
    "base_card",
    "benign_markdown",
    "splice_benign_markdown",
    "render_markdown",
    "safety_table",
    "summary_table",
    "write_model_store_readme",
]


def base_card(spec: ModelSpec, parameters: int, init_weights: dict[str, Any]) -> dict[str, Any]:
    """The registry-derived part of a card, with neutral calibration values to be overwritten."""
    from served_model.transforms import data_config  # needs timm: only when a card is built

    cfg = data_config(spec)
    return {
        "schema_version": CARD_SCHEMA_VERSION,
        "name": spec.name,
        "version": spec.version,
        "architecture": {
            "backbone": spec.backbone,
            "pretrained_config": spec.timm_name,
            "sequence": spec.to_dict()["sequence"],
            "token_dim": spec.token_dim,
            "parameters": parameters,
        },
        "input_size": spec.input_size,
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "interpolation": cfg["interpolation"],
        "classes": list(spec.classes),
        "stain_normalization": spec.stain_normalization,
        "temperature": 1.0,
        "abstain_threshold": 0.0,
        "smear_gate": {},
        "init_weights": dict(init_weights),
        "training": {},
        "metrics": {},
        "intended_use": (
            "Decision support for trained haematology laboratory staff: a pre-classification of a "
            "Giemsa-stained peripheral blood smear field of view as Benign (hematogones), Early Pre-B, "
            "Pre-B or Pro-B ALL, to be confirmed or reclassified by a qualified reviewer. Not a diagnosis."
        ),
        "limitations": [
            "Trained on one public data set from one hospital (Taleqani Hospital, Tehran); not clinically validated.",
            "Class is confounded with acquisition colour and exposure in the training data. Colour-normalised "
            "inputs (grayscale, or per-image standardised luminance) remove that route, but other acquisition "
            "differences (focus, magnification, cell density) may still carry class information; see the "
            "perturbation metrics and the colour-histogram baseline.",
            "Training frames are 4:3 microscope frames squashed to a square; inputs are resized the same way.",
            "Decision support only: every result must be reviewed and signed off by qualified staff.",
        ],
    }


_NORMALISATION_TEXT: dict[str | None, str] = {
    None: "none",
    "grayscale": "grayscale (ITU-R 601 luminance, colour removed)",
    "luminance": (
        "luminance (ITU-R 601), standardised per image to the training set's mean/std: colour, exposure and "
        "contrast removed (served_model.stain.standardize_luminance)"
    ),
    "reinhard": "Reinhard LAB normalisation to the training reference",
}


# -- Markdown rendering -------------------------------------------------------------------------
_PERTURBATION_LABELS = {
    "grayscale": "grayscale",
    "stain_normalized": "stain-normalised (Reinhard)",
    "hue_shift": "hue shift +20 deg",
    "white_balance": "white balance (R x1.12, B x0.85)",
}


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _metric_rows(metrics: dict[str, Any]) -> list[str]:
    rows = [
        "| input | accuracy | macro-F1 | ECE (calibrated) | colour-histogram baseline accuracy / macro-F1 |",
        "|---|---|---|---|---|",
    ]
    base = metrics.get("baseline_colour_histogram", {})
    orig = metrics.get("original", {})
    b = base.get("original", {})
    rows.append(
        f"| original | {_fmt(orig.get('accuracy'))} | {_fmt(orig.get('macro_f1'))} | "
        f"{_fmt(metrics.get('calibration', {}).get('ece_after'))} | "
        f"{_fmt(b.get('accuracy'))} / {_fmt(b.get('macro_f1'))} |"
    )
    for key, m in metrics.get("perturbations", {}).items():
        b = base.get(key, {})
        rows.append(
            f"| {_PERTURBATION_LABELS.get(key, key)} | {_fmt(m.get('accuracy'))} | {_fmt(m.get('macro_f1'))} | "
            f"{_fmt(m.get('ece'))} | {_fmt(b.get('accuracy'))} / {_fmt(b.get('macro_f1'))} |"
        )
    return rows


def _ci(s: dict[str, Any]) -> str:
    return f"{_fmt(s['value'])} [{_fmt(s['ci95'][0])}, {_fmt(s['ci95'][1])}]"


BENIGN_HEADING = "### Benign safety operating point"


def benign_markdown(card: dict[str, Any]) -> list[str]:
    """The Benign safety operating point (training.ensemble writes it): threshold and its out-of-fold cost."""
    op = card.get("metrics", {}).get("benign_operating_point")
    if not op or card.get("benign_threshold") is None:
        return []
    cross = op["cross_fitted"]
    b, a = cross["before"], cross["after"]
    return [
        BENIGN_HEADING,
        "",
        f"Benign is answered only when P(Benign) > {card['benign_threshold']:.6f}, {THRESHOLD_WORDS}; otherwise the "
        "frame is referred (`abstain_reason: benign_not_confirmed`). Cross-fitted over "
        f"{cross['folds']} folds of validation blocks (temperature, abstention and Benign thresholds fitted on one "
        "fold, applied to the other), before (confidence rule alone) and after the Benign rule:",
        "",
        "| | coverage | accepted accuracy | malignant answered Benign | Benign frames answered | "
        "sensitivity for malignancy [95% CI] | malignant answered malignant [95% CI] |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {_fmt(r['coverage'])} | {_fmt(r['accepted_accuracy'])} | {r['malignant_answered_benign']} of "
            f"{r['malignant_frames']} | {_fmt(r['benign_coverage'])} | {_ci(r['sensitivity'])} | "
            f"{_ci(r['malignant_answered_malignant'])} |"
            for name, r in (("before", b), ("after", a))
        ],
        "",
        *(
            [
                f"At the card's thresholds on all validation frames (fitted there: optimistic): malignant answered "
                f"Benign {ins['before']['malignant_answered_benign']} -> {ins['after']['malignant_answered_benign']}, "
                f"Benign frames answered {_fmt(ins['before']['benign_coverage'])} -> "
                f"{_fmt(ins['after']['benign_coverage'])}, coverage {_fmt(ins['before']['coverage'])} -> "
                f"{_fmt(ins['after']['coverage'])}.",
                "",
            ]
            if (ins := op.get("in_sample"))
            else []
        ),
        "Fold thresholds (Benign): "
        + ", ".join(f"{f['benign_threshold']:.4f}" for f in cross["per_fold"])
        + ". Sensitivity for malignancy: malignant frames not answered Benign (answered malignant or referred); "
        "Wilson 95% intervals. A threshold learnt on one fold does not bound the other fold's errors when that "
        "fold's malignant frames were less Benign-like: the out-of-fold count is the estimate for new frames.",
        "",
    ]


def splice_benign_markdown(markdown: str, card: dict[str, Any]) -> str:
    """``markdown`` (a rendered card) with its Benign section replaced by, or inserted as, the one of ``card``:
    for updating a committed card's Markdown without re-rendering the rest (whose order the JSON lost)."""
    section = "\n".join(benign_markdown(card))
    lines = markdown.split("\n")
    if BENIGN_HEADING in lines:
        start = lines.index(BENIGN_HEADING)
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("Fold thresholds (Benign)")) + 2
        return "\n".join([*lines[:start], section.rstrip("\n"), "", *lines[end:]])
    at = next(
        (i for i, line in enumerate(lines) if line.startswith("| class | precision")),
        next(i for i, line in enumerate(lines) if line.startswith("## Smear gate")),
    )
    return "\n".join([*lines[:at], section.rstrip("\n"), "", *lines[at:]])


def render_markdown(card: dict[str, Any]) -> str:
    """A human-readable rendering of a (valid) model card."""
    validate_card(card)
    arch = card["architecture"]
    seq = arch.get("sequence", {})
    metrics = card.get("metrics", {})
    training = card.get("training", {})
    gate = card.get("smear_gate", {})
    init = card.get("init_weights", {})
    norm = card["stain_normalization"]
    lines = [
        f"# Model card: {card['name']} (version {card['version']})",
        "",
        "Generated from `card.json` (the copy inside the .mar is authoritative); do not edit by hand.",
        "",
        "## Architecture and input",
        f"- CNN stage: timm `{arch.get('backbone')}` (normalisation from `{arch.get('pretrained_config')}`), "
        f"feature grid projected to {arch.get('token_dim')}-d tokens",
        f"- Sequence stage: {seq.get('kind')} (hidden {seq.get('hidden_size')}, layers {seq.get('num_layers')}, "
        f"bidirectional {seq.get('bidirectional')})",
        f"- Parameters: {arch.get('parameters'):,}" if isinstance(arch.get("parameters"), int) else "- Parameters: n/a",
        f"- Input: whole frame resized (squashed) to {card['input_size']}x{card['input_size']}, "
        f"{card['interpolation']} interpolation, mean {card['mean']}, std {card['std']}",
        f"- Stain / colour normalisation: {_NORMALISATION_TEXT.get(norm, norm)}",
        f"- Classes (logit order): {', '.join(card['classes'])}",
        "",
        "## Initial weights",
        f"- Source: {init.get('source')}"
        + (f", file `{init.get('path')}` (sha256 `{init.get('sha256')}`)" if init.get("path") else ""),
        "",
        "## Training",
    ]
    data = training.get("data", {})
    lines += [
        f"- Data: {data.get('source', 'n/a')}",
        f"- MANIFEST.csv sha256: `{data.get('manifest_sha256')}`",
        f"- Split: {data.get('split_rule')} ({data.get('n_train')} training / {data.get('n_val')} validation images)",
        f"- Recipe: {training.get('recipe')}",
        f"- Wall time: {_fmt(training.get('wall_time_s'), 0)} s training"
        + (
            f" + {_fmt(training.get('feature_cache_time_s'), 0)} s feature caching"
            if training.get("feature_cache_time_s")
            else ""
        ),
        f"- Hardware: {training.get('hardware')}",
    ]
    if training.get("notes"):
        lines.append(f"- Notes: {training['notes']}")
    cal = metrics.get("calibration", {})
    ab = metrics.get("abstention", {})
    lines += [
        "",
        "## Validation metrics (block-wise held-out validation split)",
        "",
        *_metric_rows(metrics),
        "",
        f"Calibration: temperature {card['temperature']} (fitted on validation); ECE {_fmt(cal.get('ece_before'))} "
        f"before, {_fmt(cal.get('ece_after'))} after.",
        f"Abstention: below confidence {_fmt(card['abstain_threshold'])} the model abstains (refer for manual review); "
        f"on validation the accepted predictions are {_fmt(ab.get('accepted_accuracy'))} accurate at coverage "
        f"{_fmt(ab.get('coverage'))} (threshold and temperature were fitted on the same blocks: optimistic).",
    ]
    cross = cal.get("cross_fitted")
    if cross:
        lines.append(
            f"Cross-fitted over {cross['folds']} folds of validation blocks (fitted on one, measured on the other): "
            f"ECE {_fmt(cross['ece_after'])}, coverage {_fmt(cross['coverage'])}, accepted accuracy "
            f"{_fmt(cross['accepted_accuracy'])}: the estimate for blocks the calibration has not seen."
        )
    lines += [
        "",
        *benign_markdown(card),
    ]
    per_class = metrics.get("original", {}).get("per_class", {})
    if per_class:
        lines += ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for c, m in per_class.items():
            lines.append(f"| {c} | {_fmt(m['precision'])} | {_fmt(m['recall'])} | {_fmt(m['f1'])} | {m['support']} |")
        lines.append("")
    plots = metrics.get("plots", {})
    if plots:
        lines += [f"![confusion matrix](../{plots['confusion']}) ![reliability diagram](../{plots['reliability']})", ""]
    if plots.get("training"):
        lines += [f"![training curves](../{plots['training']})", ""]
    lines += [
        "## Smear gate",
        f"- Kind: {gate.get('kind')}, threshold {gate.get('threshold')}, "
        f"novelty limit {_fmt(gate.get('novelty_limit'))}"
        + (
            f", pooled-feature distance limit 2 x {_fmt(gate.get('feature_distance_p99'))}"
            if gate.get("feature_distance_p99")
            else ""
        ),
        f"- Fitted on: {gate.get('info', {}).get('fitted_on', 'n/a')}",
        "",
        "| test set | n | accepted | should be |",
        "|---|---|---|---|",
    ]
    for name, r in gate.get("measured_rates", {}).items():
        lines.append(
            f"| {name} | {r['n']} | {_fmt(r['accepted'])} | {'accepted' if r['should_accept'] else 'refused'} |"
        )
    lines += ["", *ood_markdown(card)] if card.get("ood") else []
    lines += [
        "",
        "## Intended use",
        card["intended_use"],
        "",
        "## Limitations",
        *[f"- {x}" for x in card["limitations"]],
        "",
    ]
    return "\n".join(lines)


OOD_HEADING = "## Out of distribution"


def ood_markdown(card: dict[str, Any]) -> list[str]:
    """The card's out-of-distribution section (training/ood.py fits it; docs/ood.md has every candidate)."""
    ood = card.get("ood") or {}
    info = ood.get("info", {})
    val = info.get("validation", {})
    before, after = val.get("before", {}), val.get("after", {})
    lines = [
        OOD_HEADING,
        f"- Score: `{info.get('score', ood.get('method'))}`, threshold {_fmt(ood.get('threshold'))}: beyond it the "
        "model abstains with `out_of_distribution` (no label; the score and threshold are in `quality`).",
        f"- Fitted on: {info.get('fitted_on', 'n/a')}; threshold: {info.get('threshold_rule', 'n/a')} "
        f"(kept {_fmt(val.get('kept'))}, cross-fitted over two halves of the validation blocks "
        f"{_fmt(val.get('kept_cross_fitted'))}). Command: `{info.get('command', 'n/a')}`.",
        f"- Cost on the same-source validation frames: coverage {_fmt(before.get('coverage'))} -> "
        f"{_fmt(after.get('coverage'))}, macro-F1 of the answered frames {_fmt(before.get('macro_f1_answered'))} -> "
        f"{_fmt(after.get('macro_f1_answered'))}, malignant frames answered Benign "
        f"{before.get('malignant_answered_benign')} -> {after.get('malignant_answered_benign')}.",
        "",
        "What the served model answers per source (share of images; docs/ood.md describes the sources):",
        "",
        "| source | n | refused (smear gate) | out of distribution | abstained | Benign | ALL |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in info.get("sources", {}).items():
        lines.append(
            f"| {name} | {r['n']} | {_fmt(r['refused'])} | {_fmt(r['ood'])} | {_fmt(r['abstained'])} | "
            f"{_fmt(r['benign'])} | {_fmt(r['all'])} |"
        )
    return lines


def summary_table(cards: list[dict[str, Any]]) -> str:
    header = (
        "| model | input | acc | macro-F1 | grayscale F1 | stain-norm. F1 | hue F1 | WB F1 | ECE before -> after | "
        "abstain thr. / coverage | out-of-fold ECE / coverage / accepted acc. | training wall time |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [header]
    for c in cards:
        m = c.get("metrics", {})
        p = m.get("perturbations", {})
        cal = m.get("calibration", {})
        ab = m.get("abstention", {})
        tr = c.get("training", {})
        rows.append(
            f"| [{c['name']}]({c['name']}.md) | {c['input_size']} | {_fmt(m.get('original', {}).get('accuracy'))} | "
            f"{_fmt(m.get('original', {}).get('macro_f1'))} | "
            + " | ".join(
                _fmt(p.get(k, {}).get("macro_f1"))
                for k in ("grayscale", "stain_normalized", "hue_shift", "white_balance")
            )
            + f" | {_fmt(cal.get('ece_before'))} -> {_fmt(cal.get('ece_after'))} | {_fmt(c['abstain_threshold'], 3)} / "
            f"{_fmt(ab.get('coverage'), 3)} | "
            + (
                f"{_fmt(cross['ece_after'])} / {_fmt(cross['coverage'], 3)} / {_fmt(cross['accepted_accuracy'])}"
                if (cross := cal.get("cross_fitted"))
                else "-"
            )
            + f" | {_fmt(tr.get('wall_time_s'), 0)} s"
            + (f" + {_fmt(tr['feature_cache_time_s'], 0)} s caching" if tr.get("feature_cache_time_s") else "")
            + " |"
        )
    if cards:
        base = cards[0].get("metrics", {}).get("baseline_colour_histogram", {})
        if base:
            rows.append(
                "| colour-histogram baseline (48-bin RGB + logistic regression) | - | "
                f"{_fmt(base.get('original', {}).get('accuracy'))} | "
                f"{_fmt(base.get('original', {}).get('macro_f1'))} | "
                + " | ".join(
                    _fmt(base.get(k, {}).get("macro_f1"))
                    for k in ("grayscale", "stain_normalized", "hue_shift", "white_balance")
                )
                + " | - | - | - | - |"
            )
    return "\n".join(rows)


def safety_table(cards: list[dict[str, Any]], ensemble: dict[str, Any] | None = None) -> str:
    """Out-of-fold Benign operating point of every carded model (and the ensemble): empty when none has one."""
    rows = []
    for c in cards:
        op = c.get("metrics", {}).get("benign_operating_point")
        if op and c.get("benign_threshold") is not None:
            b, a = op["cross_fitted"]["before"], op["cross_fitted"]["after"]
            rows.append(
                (
                    f"[{c['name']}]({c['name']}.md)",
                    c.get("metrics", {}).get("original", {}).get("macro_f1"),
                    c["benign_threshold"],
                    b,
                    a,
                )
            )
    if ensemble:
        m = ensemble["metrics"]["ensemble"]
        rows.append(("[ensemble](ensemble.md)", m["macro_f1"], ensemble["benign_threshold"], m["before"], m["after"]))
    if not rows:
        return ""
    lines = [
        "| model | macro-F1 | Benign threshold | coverage | accepted acc. | malignant answered Benign "
        "(before -> after) | Benign frames answered (before -> after) | sensitivity for malignancy [95% CI] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, f1, thr, b, a in rows:
        lines.append(
            f"| {name} | {_fmt(f1)} | {thr:.4f} | {_fmt(a['coverage'])} | {_fmt(a['accepted_accuracy'])} | "
            f"{b['malignant_answered_benign']} -> {a['malignant_answered_benign']} of {a['malignant_frames']} | "
            f"{_fmt(b['benign_coverage'])} -> {_fmt(a['benign_coverage'])} | {_ci(a['sensitivity'])} |"
        )
    return "\n".join(lines)


def write_model_store_readme(cards: list[dict[str, Any]], path: Any, ensemble: dict[str, Any] | None = None) -> None:
    """Write model_store/README.md: the generated summary table of every carded model (and, when the cards carry
    it, the Benign safety operating point, with the ensemble's from ``ensemble.json``)."""
    import json
    from pathlib import Path

    if ensemble is None and (Path(path).parent / "ensemble.json").is_file():
        ensemble = json.loads((Path(path).parent / "ensemble.json").read_text())
    safety = safety_table(cards, ensemble)
    safety_lines = (
        [
            "## Ensemble and Benign safety operating point",
            "",
            "Out of fold (validation blocks dealt into folds, every parameter fitted on the other folds). Benign is "
            f"answered only when P(Benign) is above {THRESHOLD_WORDS}; "
            "*before*: the confidence rule alone. Sensitivity for malignancy: Early/Pre/Pro frames not answered "
            "Benign (answered malignant or referred), Wilson 95% interval. The portal's consensus is the ensemble "
            "([ensemble.md](ensemble.md), `make evaluate-ensemble`).",
            "",
            safety,
            "",
        ]
        if safety
        else []
    )

    text = "\n".join(
        [
            "# Model store",
            "",
            "The TorchServe archives (`<model>.mar`, built by `make archive` from `artifacts/`) and their model cards.",
            "Generated by `make evaluate` (training/evaluate.py); do not edit by hand. All metrics are measured on",
            "the block-wise validation split of the developer part of the data set (see each card for the split rule).",
            "The grayscale / stain-normalised / hue / white-balance columns are macro-F1 under those perturbations.",
            "Temperature and abstention threshold are fitted on the validation blocks; the out-of-fold column fits",
            "them on half of the blocks and measures on the other half (both ways), the estimate for unseen blocks.",
            "",
            summary_table(cards),
            "",
            *safety_lines,
            "The cell-level model `wbc_cells` (white cells found, outlined and typed for a differential) has its own "
            "card with its own measures: [wbc_cells.md](wbc_cells.md).",
            "",
            "The frame models' smear gate (how it was fitted, what it refuses and accepts on kinds of image it never "
            "saw): [smear_gate.md](smear_gate.md).",
            "",
        ]
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
