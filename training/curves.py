"""Training curves from ``artifacts/<model>/train.log``: training loss and validation macro-F1 per epoch.

    python -m training.curves [--artifacts artifacts] [--docs docs/models] [--model NAME ...]

``make evaluate`` draws them too. A log may hold several runs (resumes, restarts): an epoch number
that does not increase starts the curve again from that epoch, so the picture shows the run that
produced the saved model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from core.registry import model_names

__all__ = ["read_epochs", "plot_training_curves", "main"]


def read_epochs(log_path: Path) -> list[dict[str, Any]]:
    """The per-epoch JSON records of the run that ended the log, in epoch order."""
    epochs: list[dict[str, Any]] = []
    for line in log_path.read_text().splitlines():
        brace = line.find("{")
        if brace < 0:
            continue
        try:
            rec = json.loads(line[brace:])
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or "epoch" not in rec:
            continue
        epochs = [e for e in epochs if e["epoch"] < rec["epoch"]]
        epochs.append(rec)
    return epochs


def plot_training_curves(log_path: Path, title: str, path: Path) -> bool:
    """Write the curve PNG; False (and nothing written) when the log holds no epochs."""
    epochs = read_epochs(log_path)
    if not epochs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [e["epoch"] for e in epochs]

    def series(key: str) -> list[float]:  # an epoch without the value (not validated) is a gap
        return [float("nan") if e.get(key) is None else float(e[key]) for e in epochs]

    fig, ax = plt.subplots(figsize=(3.8, 3.0), dpi=90)
    ax.plot(x, series("train_loss"), "o-", ms=3, lw=1, color="tab:blue", label="training loss")
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_ylabel("training loss", fontsize=8, color="tab:blue")
    ax.tick_params(labelsize=7)
    ax2 = ax.twinx()
    ax2.plot(x, series("val_orig_macro_f1"), "s-", ms=3, lw=1, color="tab:orange", label="validation macro-F1")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("validation macro-F1", fontsize=8, color="tab:orange")
    ax2.tick_params(labelsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--docs", type=Path, default=Path("docs/models"))
    ap.add_argument("--model", nargs="*", default=model_names())
    args = ap.parse_args(argv)
    for name in args.model:
        log = args.artifacts / name / "train.log"
        out = args.docs / f"{name}_training.png"
        if log.is_file() and plot_training_curves(log, f"{name}: training", out):
            print(f"{name}: {out}", flush=True)
        else:
            print(f"{name}: no epochs in {log}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
