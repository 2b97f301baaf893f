"""Evaluation, calibration, gate statistics and the model card: ``python -m training.evaluate --model NAME``.

On the block-wise validation split, for the saved fp16 model in ``artifacts/<model>/model``:
accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, ECE and reliability diagram,
on original images and under the perturbations of training.augment.PERTURBATIONS; beside them
the colour-histogram baseline (48-bin RGB histogram + logistic regression) on the same split and
perturbations. Temperature scaling is fitted on the validation logits (original images) and the
abstention threshold is chosen on the calibrated validation probabilities so that accepted
predictions reach 98% accuracy; both are fitted on the same validation blocks they are reported
on, so the reported coverage is optimistic for new data.

Writes ``artifacts/<model>/metrics.json``, ``artifacts/<model>/card.json`` (validated),
``docs/models/<model>_{confusion,reliability}.png``, ``model_store/<model>.md`` and the summary
table in ``model_store/README.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.card import validate_card
from core.registry import CLASS_NAMES, get_spec
from served_model import compat  # noqa: F401  (before timm)
from served_model.network import HybridClassifier, count_parameters, load_model
from served_model.smear_gate import SmearGate
from served_model.transforms import build_eval_transform
from training.augment import PERTURBATIONS
from training.calibrate import (
    abstention_threshold,
    classification_metrics,
    cross_fitted_calibration,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    softmax,
)
from training.card import base_card, render_markdown, write_model_store_readme
from training.curves import plot_training_curves
from training.data import Sample, Split, load_split
from training.features import VIEW_PERTURBATION, cache_dir_for, cache_path, load_cache, map_batches
from training.operating_point import member_operating_point

__all__ = ["histogram_features", "baseline_metrics", "model_logits", "plot_confusion", "plot_reliability", "main"]

PERTURBATION_VIEW = {v: k for k, v in VIEW_PERTURBATION.items()}
REPO = Path(__file__).resolve().parent.parent


# -- colour-histogram baseline ------------------------------------------------------------------
def histogram_features(image: Image.Image, bins: int = 16) -> np.ndarray:
    """48-bin RGB histogram (16 per channel), normalised to sum 1 per channel."""
    h = np.asarray(image.convert("RGB").histogram(), dtype=np.float64).reshape(3, 256)
    h = h.reshape(3, bins, 256 // bins).sum(axis=2)
    return (h / h.sum(axis=1, keepdims=True)).ravel()


def baseline_metrics(split: Split, out: Path) -> dict[str, Any]:
    """Logistic regression on RGB histograms, trained on original training images (cached in ``out``)."""
    if out.exists():
        return dict(json.loads(out.read_text()))
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.stack([histogram_features(Image.open(s.path)) for s in split.train])
    y = np.array([s.label for s in split.train])
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    clf.fit(x, y)
    val_y = np.array([s.label for s in split.val])
    res: dict[str, Any] = {}
    for name, fn in [("original", None), *PERTURBATIONS.items()]:
        xv = np.stack(
            [histogram_features(fn(Image.open(s.path).convert("RGB")) if fn else Image.open(s.path)) for s in split.val]
        )
        res[name] = classification_metrics(clf.predict_proba(xv), val_y, CLASS_NAMES, are_probs=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    return res


# -- model logits -------------------------------------------------------------------------------
@torch.no_grad()
def _image_outputs(
    model: HybridClassifier, samples: Sequence[Sample], perturbation: str | None, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    transform = build_eval_transform(model.spec)
    fn = PERTURBATIONS[perturbation] if perturbation else None
    logits, pooled = [], []
    for i in range(0, len(samples), batch_size):
        ims = [Image.open(s.path).convert("RGB") for s in samples[i : i + batch_size]]
        x = torch.stack([transform(fn(im) if fn else im) for im in ims])
        feats = model.forward_features(x)
        pooled.append(model.forward_head(feats, pre_logits=True).numpy())
        logits.append(model.forward_head(feats).numpy())
    return np.concatenate(logits), np.concatenate(pooled)


@torch.no_grad()
def _cached_outputs(
    model: HybridClassifier, maps: np.ndarray, cnn_split: str | None = None, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    tail = model.cnn_split(cnn_split)[1]
    logits, pooled = [], []
    for x in map_batches(maps, batch_size):
        feats = model.forward_sequence(tail(x))
        pooled.append(model.forward_head(feats, pre_logits=True).numpy())
        logits.append(model.forward_head(feats).numpy())
    return np.concatenate(logits), np.concatenate(pooled)


def model_logits(
    model: HybridClassifier,
    split: Split,
    perturbation: str | None,
    cache_dir: Path | None,
    cnn_split: str | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """(logits, pooled features, how) on the validation blocks under ``perturbation``.

    With a frozen CNN stage (or stem, cut after ``cnn_split``), cached maps of the same images are
    used (identical to running the frozen part); otherwise the model runs on the images.
    """
    # (no shortcut for "grayscale" with a luminance-only model: after resizing, the rounding differs)
    view = "orig" if perturbation is None else PERTURBATION_VIEW[perturbation]
    if cache_dir is not None and cache_path(cache_dir, "val", view).exists():
        logits, pooled = _cached_outputs(model, load_cache(cache_dir, "val", view, split.val), cnn_split)
        return logits, pooled, f"cached frozen-CNN maps ({view})"
    logits, pooled = _image_outputs(model, split.val, perturbation)
    return logits, pooled, "images"


# -- plots --------------------------------------------------------------------------------------
def plot_confusion(cm: np.ndarray, classes: Sequence[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.4, 3.0), dpi=90)
    ax.imshow(cm, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                str(cm[i][j]),
                ha="center",
                va="center",
                fontsize=8,
                color="black" if cm[i][j] < cm.max() / 2 else "white",
            )
    ax.set_xticks(range(len(classes)), classes, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_reliability(
    bins_before: list[dict[str, float]],
    bins_after: list[dict[str, float]],
    ece: tuple[float, float],
    title: str,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.4, 3.0), dpi=90)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    for bins, label, marker in (
        (bins_before, f"T=1 (ECE {ece[0]:.3f})", "o"),
        (bins_after, f"calibrated (ECE {ece[1]:.3f})", "s"),
    ):
        pts = [(b["confidence"], b["accuracy"]) for b in bins if b["count"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ms=3, lw=1, label=label)
    ax.set_xlabel("confidence", fontsize=8)
    ax.set_ylabel("accuracy", fontsize=8)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# -- main ---------------------------------------------------------------------------------------
def evaluate_model(name: str, artifacts: Path, data: str | None, docs: Path, store: Path) -> dict[str, Any]:
    t0 = time.time()
    spec = get_spec(name)
    out_dir = artifacts / name
    model = load_model(out_dir / "model")
    train_info = json.loads((out_dir / "train_info.json").read_text())
    split = load_split(data)
    labels = np.array([s.label for s in split.val])
    cnn_split = train_info.get("cnn_split")
    cache_dir = cache_dir_for(artifacts, name, cnn_split) if train_info.get("recipe_kind") == "cached" else None

    logits, pooled, how = model_logits(model, split, None, cache_dir, cnn_split)
    temperature = fit_temperature(logits, labels)
    probs_before, probs_after = softmax(logits), softmax(logits, temperature)
    original = classification_metrics(logits, labels, spec.classes)
    ece_before = expected_calibration_error(probs_before, labels)
    ece_after = expected_calibration_error(probs_after, labels)
    abstain = abstention_threshold(probs_after, labels, 0.98)
    metrics: dict[str, Any] = {
        "split": {"rule": split.rule(), "n_train": len(split.train), "n_val": len(split.val)},
        "original": original | {"computed_from": how},
        "perturbations": {},
        "calibration": {
            "temperature": round(temperature, 4),
            "ece_before": round(ece_before, 4),
            "ece_after": round(ece_after, 4),
            "fitted_on": "validation blocks, original images",
            # T and threshold fitted on half the blocks, measured on the other half, and back
            "cross_fitted": cross_fitted_calibration(logits, labels, [s.block for s in split.val]),
        },
        "abstention": abstain | {"target_accuracy": 0.98, "fitted_on": "validation blocks, calibrated probabilities"},
    }
    # the Benign safety operating point: no malignant validation frame answered Benign (measured out of fold)
    benign_threshold, metrics["benign_operating_point"] = member_operating_point(
        logits, labels, [s.block for s in split.val], round(temperature, 4), float(abstain["threshold"])
    )
    for pert in PERTURBATIONS:
        pl, _, phow = model_logits(model, split, pert, cache_dir, cnn_split)
        m = classification_metrics(pl, labels, spec.classes, temperature=temperature)
        m["ece_uncalibrated"] = classification_metrics(pl, labels, spec.classes)["ece"]
        m["computed_from"] = phow
        metrics["perturbations"][pert] = m
    metrics["baseline_colour_histogram"] = baseline_metrics(split, artifacts / "baseline_colour_histogram.json")
    docs.mkdir(parents=True, exist_ok=True)
    plot_confusion(
        np.array(original["confusion_matrix"]),
        spec.classes,
        f"{name}: validation blocks",
        docs / f"{name}_confusion.png",
    )
    plot_reliability(
        reliability_bins(probs_before, labels),
        reliability_bins(probs_after, labels),
        (ece_before, ece_after),
        f"{name}: reliability",
        docs / f"{name}_reliability.png",
    )
    metrics["plots"] = {
        "confusion": f"docs/models/{name}_confusion.png",
        "reliability": f"docs/models/{name}_reliability.png",
    }
    if plot_training_curves(out_dir / "train.log", f"{name}: training", docs / f"{name}_training.png"):
        metrics["plots"]["training"] = f"docs/models/{name}_training.png"

    gate_file = artifacts / "smear_gate.json"
    gate_doc = json.loads(gate_file.read_text())
    gate = SmearGate.from_dict(gate_doc["gate"])
    # pooled-feature statistics of this model on training images, reported by the gate in details
    train_pooled = _train_pooled(model, split, cache_dir, cnn_split)
    gate.fit_feature_statistics(train_pooled)
    val_dist = gate._feature_distance(pooled)
    smear_gate = gate.to_dict() | {
        "measured_rates": gate_doc["rates"],
        "feature_distance_val_accept_rate": round(
            float((val_dist <= 2.0 * (gate.feature_distance_p99 or 0)).mean()), 4
        ),
    }
    metrics["eval_seconds"] = round(time.time() - t0, 1)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))

    card = base_card(spec, count_parameters(model), model.init_info)
    card.update(
        temperature=round(temperature, 4),
        abstain_threshold=float(abstain["threshold"]),
        benign_threshold=benign_threshold,
        smear_gate=smear_gate,
        metrics={k: v for k, v in metrics.items()},
        training={
            "data": {
                "source": (
                    "Acute Lymphoblastic Leukemia (ALL) image dataset (Aria et al., Kaggle 2021, "
                    "doi:10.34740/KAGGLE/DSV/2175623), developer part"
                ),
                "manifest_sha256": train_info.get("manifest_sha256"),
                "split_rule": train_info.get("split_rule"),
                "n_train": train_info.get("n_train"),
                "n_val": train_info.get("n_val"),
            },
            "recipe": train_info.get("recipe"),
            "history": train_info.get("history"),
            "wall_time_s": train_info.get("wall_time_s"),
            "feature_cache_time_s": train_info.get("cache_time_s"),
            "hardware": train_info.get("hardware"),
            "finished": train_info.get("finished"),
        },
    )
    if train_info.get("notes"):
        card["training"]["notes"] = train_info["notes"]
    validate_card(card)
    (out_dir / "card.json").write_text(json.dumps(card, indent=2))
    store.mkdir(parents=True, exist_ok=True)
    (store / f"{name}.md").write_text(render_markdown(card))
    return card


@torch.no_grad()
def _train_pooled(
    model: HybridClassifier, split: Split, cache_dir: Path | None, cnn_split: str | None, limit: int = 400
) -> np.ndarray:
    step = max(1, len(split.train) // limit)
    if cache_dir is not None and cache_path(cache_dir, "train", "orig").exists():
        maps = load_cache(cache_dir, "train", "orig", split.train)
        return _cached_outputs(model, np.asarray(maps[::step]), cnn_split)[1]
    return _image_outputs(model, split.train[::step], None)[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Evaluate, calibrate and card one or more trained models.")
    p.add_argument("--model", action="append", help="model name (repeatable); default: every model with artifacts")
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--data", default=None)
    p.add_argument("--docs", default=str(REPO / "docs" / "models"))
    p.add_argument("--store", default=str(REPO / "model_store"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    artifacts = Path(args.artifacts)
    from core.registry import model_names

    names = args.model or [n for n in model_names() if (artifacts / n / "model").is_dir()]
    for name in names:
        card = evaluate_model(name, artifacts, args.data, Path(args.docs), Path(args.store))
        m = card["metrics"]
        print(
            f"{name}: acc {m['original']['accuracy']} macro-F1 {m['original']['macro_f1']} "
            + " ".join(f"{k} {v['macro_f1']}" for k, v in m["perturbations"].items())
            + f" ECE {m['calibration']['ece_before']}->{m['calibration']['ece_after']} "
            f"T {card['temperature']} thr {card['abstain_threshold']} cov {m['abstention']['coverage']}"
        )
    cards = [
        json.loads((artifacts / n / "card.json").read_text())
        for n in model_names()
        if (artifacts / n / "card.json").exists()
    ]
    write_model_store_readme(cards, Path(args.store) / "README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
