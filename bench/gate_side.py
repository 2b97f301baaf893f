"""The smear gate on a smaller copy of the image: what it would save and what it would cost.

The gate's statistics are computed on a 128x128 copy of the image (served_model.gate_statistics.STATISTICS_SIDE),
whatever the input's size. On 2 cores they are the costliest step of a small model's answer after the
forward pass (docs/results/benchmarks.md), so this benchmark asks what a smaller copy would give. For each side:

- the statistics' time per image (one thread; median over passes that alternate between the sides in
  one process) on real 224x224 B-ALL frames and on 640x480 BCCD frames;
- a gate refitted on statistics at that side (training.fit_gate, the same data, seed and families) and
  every rate training.fit_gate measures: leave-one-family-out refusals, acceptance of a smear source left
  out of the fit, and the refitted gate on validation smears, new draws of every family and the
  regression images.

The side is a module constant of served_model/gate_statistics.py, and the served archives carry that file. Rather
than give the product a setting it does not use, each side loads a copy of the module with the constant
changed: for the timings under a name of its own, for the fits in a subprocess where the copy takes
``served_model.gate_statistics``' place before the gate and training.fit_gate import it.

    python -m bench.gate_side --sides 128 96 64 --out docs/results/gate_side
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

from PIL import Image

from bench.harness import RESULTS, markdown_table, measured, run_header, write_report
from core.paths import SHARED
from served_model.gate_statistics import STATISTICS_SIDE

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "served_model" / "gate_statistics.py"
#: the line of served_model/gate_statistics.py that sets the side
SIDE_LINE = f"_SIZE = {STATISTICS_SIDE}\n"
FRAMES = 96
PASSES = 8

__all__ = ["load_at_side", "main", "render", "time_statistics"]


def load_at_side(side: int, name: str) -> types.ModuleType:
    """served_model/gate_statistics.py with the statistics on a ``side`` x ``side`` copy, as module ``name``."""
    source = SOURCE.read_text()
    if source.count(SIDE_LINE) != 1:
        raise RuntimeError(f"{SOURCE} does not set the side with {SIDE_LINE.strip()!r} exactly once")
    module = types.ModuleType(name)
    module.__file__ = str(SOURCE)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    exec(compile(source.replace(SIDE_LINE, f"_SIZE = {side}\n"), str(SOURCE), "exec"), module.__dict__)
    return module


def _images(pattern_root: Path, pattern: str, n: int) -> list[Image.Image]:
    paths = sorted(pattern_root.glob(pattern))
    step = max(1, len(paths) // n)
    out = []
    for p in paths[::step][:n]:
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


def time_statistics(sides: list[int], images: list[Image.Image], passes: int = PASSES) -> dict[int, float]:
    """Median ms per image of ``image_statistics`` at each side, passes alternating between the sides."""
    modules = {s: load_at_side(s, f"_smear_gate_at_{s}") for s in sides}
    reference = modules[sides[0]]._hue_sat_hist(modules[sides[0]]._prepare(images[0]))
    runs: dict[int, list[float]] = {s: [] for s in sides}
    for i in range(passes + 1):
        for s in sides if i % 2 else reversed(sides):
            t0 = time.perf_counter()
            for im in images:
                modules[s].image_statistics(im, reference)
            if i:  # the first pass warms up
                runs[s].append((time.perf_counter() - t0) * 1000.0 / len(images))
    return {s: round(statistics.median(v), 3) for s, v in runs.items()}


def _fit_worker(side: int, out: Path) -> int:
    """In a subprocess: training.fit_gate with served_model.gate_statistics at ``side``."""
    import served_model

    served_model.gate_statistics = load_at_side(side, "served_model.gate_statistics")  # type: ignore[attr-defined]
    from training import fit_gate

    return fit_gate.main(["--out", str(out)])


def fit_at(side: int) -> dict[str, Any]:
    """training.fit_gate's rates for a gate fitted at ``side`` (and how long its statistics took)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gate.json"
        print(f"[gate-side {time.strftime('%H:%M:%S')}] fitting at {side} px", flush=True)
        subprocess.run(
            [sys.executable, "-m", "bench.gate_side", "--fit-worker", str(side), "--out", str(out)],
            check=True,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        result = json.loads(out.read_text())
    return {"rates": result["rates"], "statistics_seconds": result["statistics_seconds"]}


def _result(rate: dict[str, Any]) -> str:
    accepted = rate["accepted"]
    return f"accepted {accepted:.1%}" if rate["should_accept"] else f"refused {1 - accepted:.1%}"


def _shown_rates(rates: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rates as rows: the leave-one-family-out gates' acceptance of the smear test sets
    (``smears_without_<family>``) as one row, their lowest."""
    without = [r for name, r in rates.items() if name.startswith("smears_without_")]
    shown = {name: r for name, r in rates.items() if not name.startswith("smears_without_")}
    if without:
        shown["smears_without_any_family (lowest)"] = min(without, key=lambda r: r["accepted"])
    return shown


def render(report: dict[str, Any]) -> str:
    sides = [str(s) for s in report["sides"]]
    columns = [f"{s} px" for s in sides]
    ms = report["statistics_ms"]
    served = str(STATISTICS_SIDE)
    rates = {s: _shown_rates(report["fits"][s]["rates"]) for s in sides}
    worse: dict[str, list[str]] = {s: [] for s in sides}
    rate_rows = []
    for name, rate in rates[served].items():
        cells = []
        for s in sides:
            r = rates[s][name]
            if (r["accepted"] < rate["accepted"]) if rate["should_accept"] else (r["accepted"] > rate["accepted"]):
                worse[s].append(f"{name} {_result(r)} against {_result(rate)}")
                cells.append(f"**{_result(r)}**")
            else:
                cells.append(_result(r))
        rate_rows.append([name, rate["n"], *cells])
    lines = [
        "# The smear gate on a smaller copy of the image",
        "",
        measured(report) + f"; "
        f"{STATISTICS_SIDE} px is what the served gate uses. Generated by bench/gate_side.py; do not edit by hand.",
        "",
        "Time of the gate's statistics, ms per image (one thread, median of "
        f"{report['passes']} passes alternating between the sides, {report['frames']} images each):",
        "",
        *markdown_table(
            ["image", *columns],
            (
                [label, *(f"{ms[kind][s]:.2f}" for s in sides)]
                for kind, label in (("ball_224", "B-ALL frame, 224x224"), ("bccd_640x480", "BCCD frame, 640x480"))
            ),
        ),
        "",
        "A gate refitted at each side (training.fit_gate: the same smears, families and seed), on images it was "
        "not fitted on (see model_store/smear_gate.md for what each set is); in bold where it is worse than at "
        f"{STATISTICS_SIDE} px:",
        "",
        *markdown_table(["test set", "n", *columns], rate_rows),
    ]
    smaller = [s for s in sides if s != served]
    lines += ["", "Reading:", ""]
    for s in smaller:
        saved = {kind: ms[kind][served] - ms[kind][s] for kind in ms}
        lines.append(
            f"- {s} px saves {saved['ball_224']:.2f} of {ms['ball_224'][served]:.2f} ms per 224x224 frame and "
            f"{saved['bccd_640x480']:.2f} of {ms['bccd_640x480'][served]:.2f} ms per 640x480 frame; its gate does "
            + ("as well on every set." if not worse[s] else f"worse on: {'; '.join(worse[s])}.")
        )
    if all(worse[s] for s in smaller):
        lines.append(
            f"- The served gate keeps the {served}-px copy: every smaller one loses something a lab relies on "
            "(refusing what is not a smear, or accepting smears from a source the fit never saw: another "
            "microscope, camera or stain), for a saving of a few ms per image that the gate thread already "
            "takes off the answer's path (handlers/runtime.py)."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", type=int, nargs="+", default=[STATISTICS_SIDE, 96, 64])
    ap.add_argument("--out", type=Path, default=RESULTS / "gate_side")
    ap.add_argument("--fit-worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--render-only", action="store_true", help="rewrite <out>.md from <out>.json")
    args = ap.parse_args(argv)
    if args.fit_worker is not None:
        return _fit_worker(args.fit_worker, args.out)
    if args.render_only:
        args.out.with_suffix(".md").write_text(render(json.loads(args.out.with_suffix(".json").read_text())))
        return 0
    if STATISTICS_SIDE not in args.sides:
        ap.error(f"--sides must include {STATISTICS_SIDE}, the served side the others are compared with")
    frames = {
        "ball_224": _images(SHARED / "data" / "all4" / "original", "*/*.jpg", FRAMES),
        "bccd_640x480": _images(SHARED / "data" / "bccd", "JPEGImages/*.jpg", FRAMES),
    }
    report: dict[str, Any] = run_header(f"python -m bench.gate_side --sides {' '.join(map(str, args.sides))}")
    report.update(sides=args.sides, frames=FRAMES, passes=PASSES, statistics_ms={}, fits={})
    for kind, images in frames.items():
        print(f"[gate-side {time.strftime('%H:%M:%S')}] timing the statistics on {kind}", flush=True)
        report["statistics_ms"][kind] = {str(s): ms for s, ms in time_statistics(args.sides, images).items()}
    for side in args.sides:
        report["fits"][str(side)] = fit_at(side)
    write_report(args.out, report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
