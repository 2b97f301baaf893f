"""``make gate MODEL=<name> [VERSION=<v>]``: a candidate version against the served version on the locked test set,
with the acceptance criteria declared beforehand in ``model_update/acceptance.json``.

Both versions run in-process exactly as TorchServe runs them (:class:`handlers.runtime.ModelRuntime` on each
archive's unpacked ``model/`` and card: decoding, preprocessing, the smear gate, calibration with the card's
temperature, abstention and the Benign operating point of :func:`core.prediction.decide`) on every frame of the
locked test set (:mod:`model_update.lab_data`; its files are re-hashed first). Per version:

- malignancy sensitivity: the share of malignant frames (Early, Pre, Pro) not answered Benign; a referral
  (abstention) counts as caught, since a person reviews it;
- macro-F1 (and accuracy) of the most probable class, on the frames the smear gate admits;
- ECE: expected calibration error of the top probability, 15 equal-width bins;
- abstention and refusal rates, and the malignant frames answered Benign (by frame).

The cell model (``wbc_cells``) is gated on the locked cell test set (:mod:`model_update.cell_data`): each
version's runtime (:class:`handlers.cell_runtime.CellRuntime`: the typer on the cell's served crop, the card's
temperature and abstention threshold) types every cell; :func:`summarise_cells` gives blast sensitivity (blast
cells not answered a normal type), the blast cells answered a normal type (by cell), macro-F1 and accuracy of the
cell types, ECE and the abstention rate.

Each kind has its own criteria in the file (``frames``, ``cells``). Every criterion of the kind is checked (an
unknown key fails the run: a criterion the code does not check must not look declared); the report
(``<versions root>/<model>/gate-<version>.json``, with the criteria file's SHA-256 and the locked set's) and a
comparison card (``gate-<version>.md``) are written; the exit status is 1 when any criterion fails, 2 when the
gate could not run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.registry import CLASS_NAMES, cell_model_names, model_names
from model_update.cell_data import CELLS_FILE, CellItem, LockedCellSet, crop
from model_update.lab_data import DATASETS_DIR, Frame, LockedSetError, LockedTestSet, latest_dataset
from model_update.retrain import base_archive, unpack
from serving.versions import Versions

__all__ = [
    "CRITERIA_FILE",
    "BENIGN",
    "evaluate_version",
    "summarise",
    "evaluate_cells",
    "summarise_cells",
    "check",
    "render_card",
    "main",
]

CRITERIA_FILE = Path(__file__).with_name("acceptance.json")
BENIGN = CLASS_NAMES.index("Benign")
ECE_BINS = 15


def evaluate_version(mar: Path, frames: Sequence[Frame], batch: int = 8) -> list[dict[str, Any]]:
    """Each frame's answer from the archive's runtime: label (None: referred), probabilities, or refusal code."""
    from core.errors import RequestError
    from handlers.runtime import ModelRuntime

    with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
        runtime = ModelRuntime(unpack(mar, Path(tmp)))
        out: list[dict[str, Any]] = []
        for i in range(0, len(frames), batch):
            rows = [{"body": f.path.read_bytes()} for f in frames[i : i + batch]]
            for body in runtime.predict(rows):
                if isinstance(body, RequestError):
                    out.append({"refused": body.code})
                else:
                    out.append({"label": body["label"], "probabilities": body["probabilities"]})
        if runtime.gate_thread is not None:
            runtime.gate_thread.shutdown()
    return out


def _ece(conf: np.ndarray, correct: np.ndarray) -> float:
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(conf[inside].mean() - correct[inside].mean())
    return float(total)


def summarise(answers: Sequence[dict[str, Any]], frames: Sequence[Frame]) -> dict[str, Any]:
    """The version's numbers on the locked set (see the module docstring)."""
    truth = np.array([f.label for f in frames])
    admitted = np.array(["refused" not in a for a in answers])
    probs = np.array(
        [[a["probabilities"][c] for c in CLASS_NAMES] if "refused" not in a else [0.0] * 4 for a in answers]
    )
    labels = [a.get("label") for a in answers]
    top = probs.argmax(1)
    malignant = truth != BENIGN
    as_benign = np.array([lab == CLASS_NAMES[BENIGN] for lab in labels])
    missed = malignant & as_benign
    f1s = []
    for k in range(len(CLASS_NAMES)):
        t, p = (truth == k) & admitted, (top == k) & admitted
        tp = float((t & p).sum())
        denom = float(t.sum() + p.sum())
        f1s.append(2 * tp / denom if denom else 0.0)
    conf = probs.max(1)
    sel = admitted
    answered_idx = np.array([i for i, lab in enumerate(labels) if admitted[i] and lab is not None], dtype=int)
    answered = admitted & np.array([lab is not None for lab in labels])
    answered_labels = np.array([labels[i] for i in answered_idx], dtype=object)
    return {
        "frames": len(frames),
        "admitted": int(admitted.sum()),
        "refusal_rate": round(float(1 - admitted.mean()), 5) if len(frames) else 0.0,
        "abstention_rate": round(float(np.mean([lab is None for lab, a in zip(labels, admitted, strict=True) if a])), 5)
        if admitted.any()
        else 0.0,
        "accuracy": round(float((top[sel] == truth[sel]).mean()), 5) if sel.any() else 0.0,
        "macro_f1": round(float(np.mean(f1s)), 5),
        "malignant_frames": int(malignant.sum()),
        "malignancy_sensitivity": round(float(1 - missed.sum() / max(1, malignant.sum())), 5),
        "ece": round(_ece(conf[sel], (top[sel] == truth[sel]).astype(float)), 5) if sel.any() else 0.0,
        "malignant_as_benign": [frames[int(i)].sha256 for i in np.flatnonzero(missed)],
        # the drift watch's baseline (portal.models_registry.drift): what the version answers on these frames
        "class_mix": {
            c: round(float(np.mean(answered_labels == c)), 5) if answered.any() else 0.0 for c in CLASS_NAMES
        },
        "mean_confidence": round(float(conf[sel].mean()), 5) if sel.any() else 0.0,
        "confidence_sd": round(float(conf[sel].std()), 5) if sel.any() else 0.0,
        "accepted_accuracy": round(float(np.mean(answered_labels == np.array(CLASS_NAMES)[truth[answered_idx]])), 5)
        if answered.any()
        else 0.0,
    }


#: each criterion the gate knows: (rule, the metric it reads); a criterion's spec gives the allowance
#: (``max_drop`` for "not_lower", ``max_increase`` for "not_higher", ``max_count`` for "no_new")
RULES: dict[str, tuple[str, str]] = {
    "malignancy_sensitivity_not_lower": ("not_lower", "malignancy_sensitivity"),
    "blast_sensitivity_not_lower": ("not_lower", "blast_sensitivity"),
    "macro_f1_max_drop": ("not_lower", "macro_f1"),
    "calibration_bound": ("not_higher", "ece"),
    "no_new_malignant_as_benign": ("no_new", "malignant_as_benign"),
    "no_new_blast_as_normal": ("no_new", "blast_as_normal"),
}


def check(criteria: dict[str, Any], served: dict[str, Any], cand: dict[str, Any]) -> list[dict[str, Any]]:
    """One result per declared criterion; raises ValueError on a criterion this gate does not know."""
    results = []
    for name, spec in criteria.items():
        if name.startswith("_"):
            continue
        if name not in RULES:
            raise ValueError(f"acceptance criterion {name!r} is not one the gate checks")
        rule, metric = RULES[name]
        if rule == "not_lower":
            limit = served[metric] - float(spec["max_drop"])
            ok, value, text = cand[metric] >= limit, cand[metric], f">= {limit:.4f}"
        elif rule == "not_higher":
            limit = served[metric] + float(spec["max_increase"])
            ok, value, text = cand[metric] <= limit, cand[metric], f"<= {limit:.4f}"
        else:  # no_new: items (by id) the candidate gets wrong that the served version did not
            new = sorted(set(cand[metric]) - set(served[metric]))
            ok, value, text = len(new) <= int(spec["max_count"]), len(new), f"<= {int(spec['max_count'])}"
        results.append(
            {
                "name": name,
                "description": spec.get("description", ""),
                "value": value,
                "limit": text,
                "passed": bool(ok),
            }
        )
    return results


def evaluate_cells(mar: Path, cells: Sequence[CellItem], batch: int = 128) -> tuple[np.ndarray, list[str], float]:
    """(calibrated probabilities N x classes, classes, abstention threshold) of the archive's runtime on each
    cell's served crop (:class:`handlers.cell_runtime.CellRuntime`: the typer, the card's temperature)."""
    from handlers.cell_runtime import CellRuntime

    with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
        runtime = CellRuntime(unpack(mar, Path(tmp)))
        out = [
            runtime.type_crops([runtime.transform(crop(c, runtime.spec)) for c in cells[i : i + batch]]).numpy()
            for i in range(0, len(cells), batch)
        ]
    probs = np.concatenate(out) if out else np.zeros((0, len(runtime.classes)))
    return probs, list(runtime.classes), runtime.abstain_threshold


def summarise_cells(probs: np.ndarray, classes: Sequence[str], threshold: float, cells: Sequence[CellItem]) -> dict:
    """A cell typer version's numbers on the locked cell set.

    Blast sensitivity: the share of blast cells not answered as a normal type (answered blast, or abstained: an
    abstained cell is typed by a technologist); blast-as-normal: the blast cells (by id) answered a normal type.
    Macro-F1 and accuracy of the most probable type, over the types the set has cells of; ECE of the top
    probability (15 bins); abstention: top probability under the card's threshold."""
    truth = np.array([classes.index(c.label) for c in cells])
    top, conf = probs.argmax(1), probs.max(1)
    abstained = conf < threshold
    blast = classes.index("blast")
    is_blast = truth == blast
    as_normal = is_blast & ~abstained & (top != blast)
    f1s = []
    for k in sorted(set(truth.tolist())):
        t, p = truth == k, top == k
        f1s.append(2 * float((t & p).sum()) / float(t.sum() + p.sum()))
    answered = ~abstained
    normal = ~is_blast
    sources = sorted({c.source.split(":")[0] for c in cells})
    src = np.array([c.source.split(":")[0] for c in cells])
    return {
        "cells": len(cells),
        "blast_cells": int(is_blast.sum()),
        "blast_sensitivity": round(float(1 - as_normal.sum() / max(1, is_blast.sum())), 5),
        "blast_recall": round(float((top[is_blast] == blast).mean()), 5) if is_blast.any() else 0.0,
        "normal_as_blast_rate": round(float((top[normal] == blast).mean()), 5) if normal.any() else 0.0,
        "macro_f1": round(float(np.mean(f1s)), 5) if f1s else 0.0,
        "accuracy": round(float((top == truth).mean()), 5) if len(cells) else 0.0,
        "accuracy_by_source": {s: round(float((top[src == s] == truth[src == s]).mean()), 5) for s in sources},
        "ece": round(_ece(conf, (top == truth).astype(float)), 5) if len(cells) else 0.0,
        "abstention_rate": round(float(abstained.mean()), 5) if len(cells) else 0.0,
        "blast_as_normal": [cells[int(i)].key for i in np.flatnonzero(as_normal)],
        "class_mix": {
            c: round(float(np.mean(top[answered] == k)), 5) if answered.any() else 0.0 for k, c in enumerate(classes)
        },
        "mean_confidence": round(float(conf.mean()), 5) if len(cells) else 0.0,
        "confidence_sd": round(float(conf.std()), 5) if len(cells) else 0.0,
    }


#: the comparison card's metric rows per kind
CARD_ROWS = {
    "frames": ("malignancy_sensitivity", "macro_f1", "accuracy", "ece", "abstention_rate", "refusal_rate"),
    "cells": (
        "blast_sensitivity",
        "blast_recall",
        "normal_as_blast_rate",
        "macro_f1",
        "accuracy",
        "ece",
        "abstention_rate",
    ),
}


def render_card(report: dict[str, Any]) -> str:
    """The comparison card (Markdown)."""
    s, c = report["served"], report["candidate"]
    sm, cm = s["metrics"], c["metrics"]
    kind = report.get("kind", "frames")
    if kind == "cells":
        first = ("cells (blast cells)", f"{sm['cells']} ({sm['blast_cells']})", f"{cm['cells']} ({cm['blast_cells']})")
        last = ("blast cells answered a normal type", str(len(sm["blast_as_normal"])), str(len(cm["blast_as_normal"])))
    else:
        first = (
            "frames (admitted by the smear gate)",
            f"{sm['admitted']}/{sm['frames']}",
            f"{cm['admitted']}/{cm['frames']}",
        )
        last = (
            "malignant frames answered Benign",
            str(len(sm["malignant_as_benign"])),
            str(len(cm["malignant_as_benign"])),
        )
    rows = [first, *[(k, f"{sm[k]:.4f}", f"{cm[k]:.4f}") for k in CARD_ROWS[kind]], last]
    lines = [
        f"# Gate: {report['model']} {c['version']} against the served {s['version']}",
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}** on {report['finished']} "
        f"(locked test set `{report['locked_test_set']['sha256'][:12]}`, {report['locked_test_set']['size']} {kind}; "
        f"criteria `{report['criteria_file']}` sha256 `{report['criteria_sha256'][:12]}`).",
        "",
        f"| | served {s['version']} | candidate {c['version']} |",
        "|---|---|---|",
        *[f"| {a} | {b} | {d} |" for a, b, d in rows],
        "",
        "| criterion | candidate | limit | result |",
        "|---|---|---|---|",
        *[
            f"| {r['name']} | {r['value']} | {r['limit']} | {'pass' if r['passed'] else '**FAIL**'} |"
            for r in report["criteria"]
        ],
        "",
        f"Command: `{report['command']}`",
        "",
    ]
    return "\n".join(lines)


def _frame_metrics(args: argparse.Namespace, versions: Versions, version: str) -> tuple[dict, dict, dict]:
    locked = LockedTestSet.open(versions.root.parent, args.data, latest_dataset(args.datasets), args.base_limit)
    frames = locked.frames()
    served = summarise(evaluate_version(base_archive(versions), frames), frames)
    cand = summarise(evaluate_version(versions.archive(version), frames), frames)
    frozen = locked.record["frozen_at"]
    info = {"sha256": locked.sha256, "size": len(frames), "frames": len(frames), "frozen_at": frozen}
    return served, cand, info


def _cell_metrics(args: argparse.Namespace, versions: Versions, version: str) -> tuple[dict, dict, dict]:
    served_mar = base_archive(versions)
    path = versions.root.parent / CELLS_FILE
    if path.is_file():
        locked = LockedCellSet(path, json.loads(path.read_text()))
    else:  # frozen now, its B-ALL cells labelled by the served typer
        from served_model.cell_typer import load_typer

        with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
            card = versions.card(versions.default_version()) or {}
            typer = load_typer(unpack(served_mar, Path(tmp)) / "model")
            dataset = latest_dataset(args.datasets)
            locked = LockedCellSet.open(
                versions.root.parent, typer, float(card["temperature"]), dataset, args.base_limit, 1, args.weak_frames
            )
    cells = locked.cells()
    served = summarise_cells(*evaluate_cells(served_mar, cells), cells)
    cand = summarise_cells(*evaluate_cells(versions.archive(version), cells), cells)
    info = {"sha256": locked.sha256, "size": len(cells), "cells": len(cells), "frozen_at": locked.record["frozen_at"]}
    return served, cand, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=[*model_names(), *cell_model_names()])
    ap.add_argument("--version", default=None, help="the candidate (default: the newest in the versions store)")
    ap.add_argument("--criteria", type=Path, default=CRITERIA_FILE)
    ap.add_argument("--versions", type=Path, default=None)
    ap.add_argument("--model-store", type=Path, default=None)
    ap.add_argument("--datasets", type=Path, default=DATASETS_DIR)
    ap.add_argument("--data", default=None)
    ap.add_argument(
        "--base-limit",
        type=int,
        default=None,
        help="only when the locked set is frozen now (tests): original frames (every k-th), or cells per class",
    )
    ap.add_argument("--weak-frames", type=int, default=None, help="cell model, frozen now (tests): B-ALL frames")
    args = ap.parse_args(argv)
    kind = "cells" if args.model in cell_model_names() else "frames"
    versions = Versions.of(args.model, args.versions, args.model_store)
    candidates = [v for v in versions.candidates() if v != versions.default_version()]
    version = args.version or (candidates[-1] if candidates else None)
    if version is None or not versions.archive(version).is_file():
        print(f"gate: no candidate archive {version or ''} for {args.model} (run make retrain)", file=sys.stderr)
        return 2
    criteria_bytes = args.criteria.read_bytes()
    criteria = json.loads(criteria_bytes)[kind]
    t0 = time.time()
    try:
        served, cand, locked_info = (_cell_metrics if kind == "cells" else _frame_metrics)(args, versions, version)
    except LockedSetError as exc:
        print(f"gate: {exc}", file=sys.stderr)
        return 2
    results = check(criteria, served, cand)
    served_mar = base_archive(versions)
    report = {
        "model": args.model,
        "kind": kind,
        "passed": all(r["passed"] for r in results),
        "served": {"version": versions.default_version(), "archive": served_mar.name, "metrics": served},
        "candidate": {"version": version, "archive": versions.archive(version).name, "metrics": cand},
        "criteria": results,
        "criteria_file": f"{args.criteria.name} ({kind})",
        "criteria_sha256": hashlib.sha256(criteria_bytes).hexdigest(),
        "locked_test_set": locked_info,
        "seconds": round(time.time() - t0, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m model_update.gate " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    versions.report_path(version).write_text(json.dumps(report, indent=2) + "\n")
    card = render_card(report)
    versions.report_path(version).with_suffix(".md").write_text(card)
    print(card)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
