"""``python -m model_update.other_eval --model <name> [--version <v>]``: what the served version and a candidate
answer on the holdout half of the other labs' normal frames (:mod:`model_update.other_benign`), through each
archive's own runtime (:func:`model_update.gate.evaluate_version`). Every frame is normal: an ALL answer is a
false alarm. Writes ``<versions root>/<model>/other-benign-<version>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.registry import CLASS_NAMES, model_names
from model_update.gate import evaluate_version
from model_update.lab_data import Frame
from model_update.other_benign import BENIGN, holdout_sources
from model_update.retrain import base_archive
from serving.versions import Versions

__all__ = ["shares", "measure", "main"]


def shares(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a version answered on normal frames: ALL, Benign, referred (and why), refused; and its top class."""
    n = max(1, len(answers))
    labels = [a.get("label") for a in answers]
    malignant_top = [
        "refused" not in a and max(a["probabilities"], key=a["probabilities"].get) != CLASS_NAMES[BENIGN]
        for a in answers
    ]
    return {
        "frames": len(answers),
        "answered_all": round(sum(lab not in (None, CLASS_NAMES[BENIGN]) for lab in labels) / n, 4),
        "answered_benign": round(sum(lab == CLASS_NAMES[BENIGN] for lab in labels) / n, 4),
        "referred": round(
            sum(lab is None and "refused" not in a for lab, a in zip(labels, answers, strict=True)) / n, 4
        ),
        "refused": round(sum("refused" in a for a in answers) / n, 4),
        "top_class_malignant": round(sum(malignant_top) / n, 4),
    }


def measure(mar: Path, sources: dict[str, list[Frame]]) -> dict[str, Any]:
    return {name: shares(evaluate_version(mar, frames)) for name, frames in sources.items()}


def render(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table: per source, what each version answered (shares of frames)."""
    cols = ("answered_all", "answered_benign", "referred", "refused", "top_class_malignant")
    lines = [
        f"# {report['model']}: the other labs' normal frames (holdout half), served vs candidate "
        f"{report['candidate']['version']}",
        "",
        f"Command: `{report['command']}`; {report['finished']}; {report['wall_time_s']} s. {report['rule']}.",
        "Every frame is normal: `answered_all` is a false alarm; `top_class_malignant` is the share whose most "
        "probable class is Early, Pre or Pro whatever the rules then did (what the model says when nothing refers it).",
        "",
        "| source | frames | version | " + " | ".join(cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for source, served in report["served"]["answers"].items():
        for who, row in (("served", served), ("candidate", report["candidate"]["answers"][source])):
            lines.append(f"| {source} | {row['frames']} | {who} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=model_names())
    ap.add_argument("--version", default=None, help="the candidate (default: the newest version in the store)")
    ap.add_argument("--versions", type=Path, default=None)
    ap.add_argument("--model-store", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/other_benign_holdout"))
    args = ap.parse_args(argv)
    versions = Versions.of(args.model, args.versions, args.model_store)
    candidate = args.version or versions.candidates()[-1]
    served = base_archive(versions)
    sources = holdout_sources(args.work)
    t0 = time.time()
    report = {
        "model": args.model,
        "served": {"archive": served.name, "answers": measure(served, sources)},
        "candidate": {"version": candidate, "answers": measure(versions.archive(candidate), sources)},
        "command": "python -m model_update.other_eval " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rule": "holdout half of each other source (model_update.other_benign.half); never trained on",
        "wall_time_s": round(time.time() - t0, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = versions.root / f"other-benign-{candidate}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(report))
    print(render(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
