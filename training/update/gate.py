"""``make gate MODEL=<name> [VERSION=<v>]``: a candidate version against the served version on the locked test set,
with the acceptance criteria declared beforehand in ``training/update/acceptance.json``.

Both versions run in-process exactly as TorchServe runs them (:class:`handlers.runtime.ModelRuntime` on each
archive's unpacked ``model/`` and card: decoding, preprocessing, the smear gate, calibration with the card's
temperature, abstention and the Benign operating point of :func:`core.prediction.decide`) on every frame of the
locked test set (:mod:`training.update.lab_data`; its files are re-hashed first). Per version:

- malignancy sensitivity: the share of malignant frames (Early, Pre, Pro) not answered Benign; a referral
  (abstention) counts as caught, since a person reviews it;
- macro-F1 (and accuracy) of the most probable class, on the frames the smear gate admits;
- ECE: expected calibration error of the top probability, 15 equal-width bins;
- abstention and refusal rates, and the malignant frames answered Benign (by frame).

Every criterion of the file is checked (an unknown key fails the run: a criterion the code does not check must
not look declared); the report (``<versions root>/<model>/gate-<version>.json``, with the criteria file's SHA-256
and the locked set's) and a comparison card (``gate-<version>.md``) are written; the exit status is 1 when any
criterion fails, 2 when the gate could not run.
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

from core.registry import CLASS_NAMES, model_names
from serving.versions import Versions
from training.update.lab_data import DATASETS_DIR, Frame, LockedSetError, LockedTestSet, latest_dataset
from training.update.retrain import base_archive, unpack

__all__ = ["CRITERIA_FILE", "BENIGN", "evaluate_version", "summarise", "check", "render_card", "main"]

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


def check(criteria: dict[str, Any], served: dict[str, Any], cand: dict[str, Any]) -> list[dict[str, Any]]:
    """One result per declared criterion; raises ValueError on a criterion this gate does not know."""
    results = []
    for name, spec in criteria.items():
        if name.startswith("_"):
            continue
        if name == "malignancy_sensitivity_not_lower":
            limit = served["malignancy_sensitivity"] - float(spec["max_drop"])
            ok, value, text = cand["malignancy_sensitivity"] >= limit, cand["malignancy_sensitivity"], f">= {limit:.4f}"
        elif name == "macro_f1_max_drop":
            limit = served["macro_f1"] - float(spec["max_drop"])
            ok, value, text = cand["macro_f1"] >= limit, cand["macro_f1"], f">= {limit:.4f}"
        elif name == "calibration_bound":
            limit = served["ece"] + float(spec["max_increase"])
            ok, value, text = cand["ece"] <= limit, cand["ece"], f"<= {limit:.4f}"
        elif name == "no_new_malignant_as_benign":
            new = sorted(set(cand["malignant_as_benign"]) - set(served["malignant_as_benign"]))
            ok, value, text = len(new) <= int(spec["max_count"]), len(new), f"<= {int(spec['max_count'])}"
        else:
            raise ValueError(f"acceptance criterion {name!r} is not one the gate checks")
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


def render_card(report: dict[str, Any]) -> str:
    """The comparison card (Markdown)."""
    s, c = report["served"], report["candidate"]
    rows = [
        (
            "frames (admitted by the smear gate)",
            f"{s['metrics']['admitted']}/{s['metrics']['frames']}",
            f"{c['metrics']['admitted']}/{c['metrics']['frames']}",
        ),
        *[
            (k, f"{s['metrics'][k]:.4f}", f"{c['metrics'][k]:.4f}")
            for k in ("malignancy_sensitivity", "macro_f1", "accuracy", "ece", "abstention_rate", "refusal_rate")
        ],
        (
            "malignant frames answered Benign",
            str(len(s["metrics"]["malignant_as_benign"])),
            str(len(c["metrics"]["malignant_as_benign"])),
        ),
    ]
    lines = [
        f"# Gate: {report['model']} {c['version']} against the served {s['version']}",
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}** on {report['finished']} "
        f"(locked test set `{report['locked_test_set']['sha256'][:12]}`, {report['locked_test_set']['frames']} frames; "
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=model_names())
    ap.add_argument("--version", default=None, help="the candidate (default: the newest in the versions store)")
    ap.add_argument("--criteria", type=Path, default=CRITERIA_FILE)
    ap.add_argument("--versions", type=Path, default=None)
    ap.add_argument("--model-store", type=Path, default=None)
    ap.add_argument("--datasets", type=Path, default=DATASETS_DIR)
    ap.add_argument("--data", default=None)
    ap.add_argument("--base-limit", type=int, default=None, help="only when the locked set is frozen now (tests)")
    args = ap.parse_args(argv)
    versions = Versions.of(args.model, args.versions, args.model_store)
    candidates = [v for v in versions.candidates() if v != versions.default_version()]
    version = args.version or (candidates[-1] if candidates else None)
    if version is None or not versions.archive(version).is_file():
        print(f"gate: no candidate archive {version or ''} for {args.model} (run make retrain)", file=sys.stderr)
        return 2
    criteria_bytes = args.criteria.read_bytes()
    criteria = json.loads(criteria_bytes)
    try:
        locked = LockedTestSet.open(versions.root.parent, args.data, latest_dataset(args.datasets), args.base_limit)
        frames = locked.frames()
    except LockedSetError as exc:
        print(f"gate: {exc}", file=sys.stderr)
        return 2
    served_mar, served_version = base_archive(versions), versions.default_version()
    t0 = time.time()
    served = summarise(evaluate_version(served_mar, frames), frames)
    cand = summarise(evaluate_version(versions.archive(version), frames), frames)
    results = check(criteria, served, cand)
    report = {
        "model": args.model,
        "passed": all(r["passed"] for r in results),
        "served": {"version": served_version, "archive": served_mar.name, "metrics": served},
        "candidate": {"version": version, "archive": versions.archive(version).name, "metrics": cand},
        "criteria": results,
        "criteria_file": str(args.criteria.name),
        "criteria_sha256": hashlib.sha256(criteria_bytes).hexdigest(),
        "locked_test_set": {"sha256": locked.sha256, "frames": len(frames), "frozen_at": locked.record["frozen_at"]},
        "seconds": round(time.time() - t0, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m training.update.gate " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    versions.report_path(version).write_text(json.dumps(report, indent=2) + "\n")
    card = render_card(report)
    versions.report_path(version).with_suffix(".md").write_text(card)
    print(card)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
