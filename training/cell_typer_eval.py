"""Evaluate a trained cell typer, fit its temperature and abstention threshold, write the metrics.

    python -m training.cell_typer_eval [--model artifacts/wbc_cells/model] [--out artifacts/wbc_cells]

Measured on the fixed validation splits of :mod:`training.cell_data` (never trained on):

- **PBC val** (8 classes): accuracy, macro-F1, per-class precision/recall, confusion matrix.
- **BCCD val crops** (the white cell of each single-type frame, cropped by ``crop_cell`` from its
  annotated box): accuracy with the argmax over all eight classes and with the argmax restricted
  to the types a BCCD frame can carry (:data:`training.cell_data.BCCD_TYPE_TO_CLASS`).
- **Colour perturbations** (:data:`training.augment.PERTURBATIONS`: grayscale, Reinhard stain
  normalisation, hue shift, white-balance shift), applied to the whole PBC image / BCCD frame
  before cropping, as a served frame would arrive: accuracy and its change from the clean one.
- **Weakly labelled B-ALL cells** (all4 validation blocks, :mod:`training.cell_weak`; when the typer
  was trained with them): the cells the served finder finds on malignant frames (weak label
  ``blast``) and on Benign frames (lymphocyte or a sure normal type): accuracy against the weak
  labels, the blast-vs-rest AUC of the calibrated blast probability, and the share of Benign-frame
  cells called blast. The weak labels are noisy (a malignant frame also shows normal cells), so
  these are lower bounds on agreement, not a cell-level truth.
- **Calibration**: a temperature fitted on PBC val plus the weakly labelled all4 val cells (NLL: the
  ninth type, blast, exists only there); ECE before/after on PBC val (in-sample
  and 2-fold cross-fitted, the honest estimate) and on BCCD val (fitted on other data). Abstention:
  the threshold on the calibrated top probability that keeps >= ``coverage`` of PBC val; its
  accepted accuracy on PBC val and on BCCD val is reported.

The temperature and threshold are written into the model's ``model_config.json`` (``calibration``)
for the runtime; metrics go to ``<out>/typer_metrics.json`` and ``<out>/typer_confusion.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from served_model.cell_typer import CONFIG_FILE, CellTyper, build_typer_transform, crop_cell, load_typer
from training.augment import PERTURBATIONS
from training.calibrate import (
    classification_metrics,
    cross_fitted_calibration,
    expected_calibration_error,
    fit_temperature,
    softmax,
)
from training.cell_data import BCCD_TYPE_TO_CLASS, bccd_split, pbc_split
from training.cell_weak import load_weak

__all__ = ["typer_logits", "coverage_threshold", "evaluate", "main"]

#: the abstention threshold keeps at least this share of PBC val cells typed
DEFAULT_COVERAGE = 0.95


@torch.no_grad()
def typer_logits(model: CellTyper, crops: Sequence[Image.Image], batch: int = 64) -> np.ndarray:
    """Logits (N, classes) of square crops, preprocessed by :func:`build_typer_transform`."""
    transform = build_typer_transform(model.spec)
    out = [
        model(torch.stack([transform(c) for c in crops[i : i + batch]])).numpy() for i in range(0, len(crops), batch)
    ]
    return np.concatenate(out) if out else np.zeros((0, model.spec.num_classes), dtype=np.float32)


def coverage_threshold(probs: np.ndarray, coverage: float) -> float:
    """The highest threshold on the top probability that still accepts >= ``coverage`` of the rows."""
    conf = np.sort(probs.max(axis=1))
    k = int(np.floor((1.0 - coverage) * len(conf)))
    return float(conf[min(k, len(conf) - 1)])


def _accept_stats(
    probs: np.ndarray, labels: np.ndarray, threshold: float, preds: np.ndarray | None = None
) -> dict[str, float]:
    preds = probs.argmax(axis=1) if preds is None else preds
    accepted = probs.max(axis=1) >= threshold
    correct = preds == labels
    return {
        "coverage": round(float(accepted.mean()), 4),
        "accuracy_all": round(float(correct.mean()), 4),
        "accuracy_accepted": round(float(correct[accepted].mean()), 4) if accepted.any() else float("nan"),
        "error_all": round(float(1.0 - correct.mean()), 4),
        "error_accepted": round(float(1.0 - correct[accepted].mean()), 4) if accepted.any() else float("nan"),
    }


def _load_pbc(samples: Sequence[Any], perturb: Callable[[Image.Image], Image.Image] | None) -> list[Image.Image]:
    out = []
    for s in samples:
        with Image.open(s.path) as im:
            image = im.convert("RGB")
        out.append(perturb(image) if perturb else image)
    return out


def _load_bccd(
    frames: Sequence[Any], spec: Any, perturb: Callable[[Image.Image], Image.Image] | None
) -> list[Image.Image]:
    out = []
    for f in frames:
        with Image.open(f.image) as im:
            frame = im.convert("RGB")
        out.append(crop_cell(perturb(frame) if perturb else frame, f.wbc_boxes[0].as_list(), spec))
    return out


def _bccd_scores(logits: np.ndarray, labels: np.ndarray, classes: Sequence[str], temperature: float) -> dict[str, Any]:
    allowed = np.array([c in set(BCCD_TYPE_TO_CLASS.values()) for c in classes])
    probs = softmax(logits, temperature)
    pred8 = probs.argmax(axis=1)
    pred_r = np.where(allowed[None, :], probs, -1.0).argmax(axis=1)
    per_class = {}
    for c in sorted(set(labels.tolist())):
        m = labels == c
        per_class[classes[c]] = {
            "support": int(m.sum()),
            "recall_argmax8": round(float((pred8[m] == c).mean()), 4),
            "recall_restricted": round(float((pred_r[m] == c).mean()), 4),
        }
    return {
        "n": int(len(labels)),
        "accuracy_argmax8": round(float((pred8 == labels).mean()), 4),
        "accuracy_restricted": round(float((pred_r == labels).mean()), 4),
        "restricted_to": [c for c, a in zip(classes, allowed, strict=True) if a],
        "per_class": per_class,
        "predicted_counts_argmax8": {
            classes[i]: int((pred8 == i).sum()) for i in range(len(classes)) if (pred8 == i).any()
        },
    }


def _plot_confusions(panels: list[tuple[str, np.ndarray]], classes: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.6))
    for ax, (title, cm) in zip(np.atleast_1d(axes), panels, strict=True):
        rows = cm.sum(axis=1, keepdims=True)
        norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _weak_scores(
    logits: np.ndarray, labels: np.ndarray, weak: Any, classes: Sequence[str], temperature: float, threshold: float
) -> dict[str, Any]:
    """The typer on the weakly labelled all4 validation cells (labels from the frames, noisy)."""
    from sklearn.metrics import roc_auc_score

    blast = classes.index("blast")
    probs = softmax(logits, temperature)
    is_blast = labels == blast
    benign = np.array([c == "Benign" for c in weak.frame_classes])
    called = probs.argmax(1) == blast
    accepted = probs.max(1) >= threshold
    return {
        "cells": int(len(labels)),
        "weak_blast": int(is_blast.sum()),
        "benign_frame_cells": int(benign.sum()),
        "accuracy_vs_weak_labels": round(float((probs.argmax(1) == labels).mean()), 4),
        "blast_auc_vs_weak_labels": round(float(roc_auc_score(is_blast, probs[:, blast])), 4)
        if 0 < is_blast.sum() < len(labels)
        else None,
        "weak_blast_called_blast": round(float(called[is_blast].mean()), 4) if is_blast.any() else None,
        "weak_blast_called_blast_accepted": round(float((called & accepted)[is_blast].mean()), 4)
        if is_blast.any()
        else None,
        "benign_frame_cells_called_blast": round(float(called[benign].mean()), 4) if benign.any() else None,
        "ece": round(expected_calibration_error(probs, labels), 4),
    }


def evaluate(
    model_dir: Path, out: Path, threads: int = 2, coverage: float = DEFAULT_COVERAGE, limit: int = 0
) -> dict[str, Any]:
    """Measure ``model_dir`` on PBC val and BCCD val crops, write metrics and calibration; returns the metrics.

    ``limit`` > 0 keeps that many PBC images per class and BCCD frames per type (a quick check only).
    """
    from training.calibrate import confusion_matrix

    torch.set_num_threads(threads)
    t0 = time.time()
    model = load_typer(model_dir)
    spec = model.spec
    classes = spec.classes
    _, pbc_val = pbc_split()
    _, bccd_val_frames = bccd_split()
    bccd_val = [f for f in bccd_val_frames if f.single_type is not None]
    if limit:
        pbc_val = [s for c in range(len(classes)) for s in [x for x in pbc_val if x.label == c][:limit]]
        bccd_val = [f for c in classes for f in [x for x in bccd_val if x.single_type == c][:limit]]
    y_pbc = np.array([s.label for s in pbc_val])
    y_bccd = np.array([classes.index(f.single_type) for f in bccd_val])
    weak_file = json.loads((model_dir / CONFIG_FILE).read_text()).get("training", {}).get("weak")
    weak = load_weak(Path(weak_file), "val", classes) if weak_file and "blast" in classes else None

    logits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, perturb in [("clean", None), *PERTURBATIONS.items()]:
        logits[name] = (
            typer_logits(model, _load_pbc(pbc_val, perturb)),
            typer_logits(model, _load_bccd(bccd_val, spec, perturb)),
        )
        print(f"  evaluated {name} ({time.time() - t0:.0f}s)", flush=True)
    lp, lb = logits["clean"]
    lw = typer_logits(model, weak.crops) if weak is not None else np.zeros((0, len(classes)), dtype=np.float32)
    y_weak = np.array(weak.labels if weak is not None else [], dtype=int)

    # the calibration set: PBC val and the weakly labelled all4 val cells (the only blasts)
    lc, yc = np.concatenate([lp, lw]), np.concatenate([y_pbc, y_weak])
    temperature = fit_temperature(lc, yc)
    probs_p = softmax(lp, temperature)
    threshold = coverage_threshold(softmax(lc, temperature), coverage)
    cross = cross_fitted_calibration(lp, y_pbc, [s.path.name for s in pbc_val], folds=2)
    pbc = classification_metrics(lp, y_pbc, classes, temperature=temperature)
    pbc_raw = classification_metrics(lp, y_pbc, classes)
    bccd = _bccd_scores(lb, y_bccd, classes, temperature)
    probs_b = softmax(lb, temperature)
    allowed = np.array([c in set(BCCD_TYPE_TO_CLASS.values()) for c in classes])
    pred_b_restricted = np.where(allowed[None, :], probs_b, -1.0).argmax(axis=1)

    perturbations: dict[str, Any] = {}
    for name in PERTURBATIONS:
        pl, bl = logits[name]
        pacc = float((pl.argmax(1) == y_pbc).mean())
        b = _bccd_scores(bl, y_bccd, classes, temperature)
        perturbations[name] = {
            "pbc_accuracy": round(pacc, 4),
            "pbc_delta": round(pacc - float((lp.argmax(1) == y_pbc).mean()), 4),
            "bccd_accuracy_argmax8": b["accuracy_argmax8"],
            "bccd_delta_argmax8": round(b["accuracy_argmax8"] - bccd["accuracy_argmax8"], 4),
            "bccd_accuracy_restricted": b["accuracy_restricted"],
            "bccd_delta_restricted": round(b["accuracy_restricted"] - bccd["accuracy_restricted"], 4),
        }

    config_path = model_dir / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["calibration"] = {
        "temperature": round(temperature, 4),
        "abstain_threshold": round(threshold, 4),
        "fitted_on": (
            f"PBC validation split ({len(y_pbc)} images) and {len(y_weak)} weakly labelled all4 validation cells: "
            f"temperature by NLL, threshold keeps >= {coverage:.0%}"
        ),
    }
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))

    metrics: dict[str, Any] = {
        "model": str(model_dir),
        "init": model.init_info,
        "spec": spec.to_dict(),
        "pbc_val": pbc | {"accuracy_uncalibrated_argmax": pbc_raw["accuracy"]},
        "all4_weak_val": _weak_scores(lw, y_weak, weak, classes, temperature, threshold) if weak is not None else None,
        "bccd_val": bccd,
        "perturbations": perturbations,
        "calibration": {
            "temperature": round(temperature, 4),
            "fitted_on": "PBC val",
            "pbc_val_ece_before": pbc_raw["ece"],
            "pbc_val_ece_after_in_sample": pbc["ece"],
            "calibration_set": {"pbc_val": int(len(y_pbc)), "all4_weak_val": int(len(y_weak))},
            "pbc_val_ece_after_cross_fitted_2fold": cross["ece_after"],
            "cross_fitted_temperatures": cross["temperatures"],
            "bccd_val_ece_before": round(expected_calibration_error(softmax(lb), y_bccd), 4) if len(y_bccd) else None,
            "bccd_val_ece_after": round(expected_calibration_error(probs_b, y_bccd), 4) if len(y_bccd) else None,
        },
        "abstention": {
            "threshold": round(threshold, 4),
            "target_coverage_pbc_val": coverage,
            "pbc_val": _accept_stats(probs_p, y_pbc, threshold),
            "bccd_val_argmax8": _accept_stats(probs_b, y_bccd, threshold) if len(y_bccd) else None,
            "bccd_val_restricted": _accept_stats(probs_b, y_bccd, threshold, pred_b_restricted)
            if len(y_bccd)
            else None,
        },
        "targets": {
            "pbc_accuracy_ge_0.95": pbc["accuracy"] >= 0.95,
            "bccd_accuracy_argmax8_ge_0.85": bccd["accuracy_argmax8"] >= 0.85,
            "bccd_accuracy_restricted_ge_0.85": bccd["accuracy_restricted"] >= 0.85,
            "pbc_within_0.02_under_each_perturbation": all(p["pbc_delta"] >= -0.02 for p in perturbations.values()),
        },
        "eval_seconds": round(time.time() - t0, 1),
        "limit": limit,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "typer_metrics.json").write_text(json.dumps(metrics, indent=2))
    cm_bccd = confusion_matrix(y_bccd, probs_b.argmax(1), len(classes))
    _plot_confusions(
        [
            (f"PBC val (n={len(y_pbc)}, acc {pbc['accuracy']:.3f})", np.array(pbc["confusion_matrix"])),
            (f"BCCD val crops (n={len(y_bccd)}, acc {bccd['accuracy_argmax8']:.3f}, argmax over 8)", cm_bccd),
        ],
        classes,
        out / "typer_confusion.png",
    )
    print(
        f"PBC val acc {pbc['accuracy']} macro-F1 {pbc['macro_f1']}; BCCD val acc {bccd['accuracy_argmax8']} "
        f"(restricted {bccd['accuracy_restricted']}); T {temperature:.3f}, "
        f"ECE {pbc_raw['ece']} -> {cross['ece_after']} (cross-fitted); abstain below {threshold:.3f}; perturbations "
        + ", ".join(f"{k} {v['pbc_delta']:+.3f}/{v['bccd_delta_argmax8']:+.3f}" for k, v in perturbations.items()),
        flush=True,
    )
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="artifacts/wbc_cells/model")
    p.add_argument("--out", default="artifacts/wbc_cells")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--coverage", type=float, default=DEFAULT_COVERAGE)
    p.add_argument("--limit", type=int, default=0, help="per-class cap for a quick check (0: all)")
    args = p.parse_args(argv)
    evaluate(Path(args.model), Path(args.out), threads=args.threads, coverage=args.coverage, limit=args.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
