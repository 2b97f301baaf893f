"""TorchServe configured by measurement (`make bench-ts-config`): the serving benchmark (bench.serving)
run once per configuration of the frame models' workers, torch threads, batch size and batch delay, on
the same frames, each written to its own JSON, then one table: TorchServe images/s at 8 requests in
flight, p50 of a single request, and the model worker's CPU per image, per model and configuration.

The baseline is the shipped configuration (docker/torchserve/config.properties) with every frame model
at 1 ms (as shipped until mobilenetv3_lstm moved to 2 ms, docs/guides/deployment.md); every variant changes
one thing in it, for every frame model at once (each model has its own TorchServe worker, so the models
do not compete within one run: bench.serving measures one model at a time). ``gate inline`` computes the
smear gate's statistics on the request path (``LEUKEMIA_GATE_THREAD=0``, on both sides) instead of on
the runtime's gate thread. ``--variants`` with ``--merge`` measures some again and keeps the others'
results (each variant records when it ran).
Writes docs/results/torchserve_config.md and .json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import RESULTS, measured

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "docker" / "torchserve" / "config.properties"

#: name -> (workers per model, torch threads per worker, batchSize, maxBatchDelay ms, gate thread). Every
#: variant changes one thing in the shipped configuration.
VARIANTS: dict[str, tuple[int, int, int, int, bool]] = {
    "baseline: 1 worker, 1 thread, batch 4, 1 ms": (1, 1, 4, 1, True),
    "gate inline": (1, 1, 4, 1, False),
    "2 workers, 1 thread": (2, 1, 4, 1, True),
    "1 worker, 2 threads": (1, 2, 4, 1, True),
    "batch 4, 5 ms": (1, 1, 4, 5, True),
    "batch 1, no delay": (1, 1, 1, 0, True),
    "batch 8, 1 ms": (1, 1, 8, 1, True),
}


def _log(msg: str) -> None:
    print(f"[ts-config {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _row(result: dict[str, Any]) -> dict[str, float | None]:
    ts = result["torchserve"]
    levels = {lv["concurrency"]: lv for lv in ts["levels"]}
    cpu = ts.get("cpu_ms_per_image_c8") or {}
    paired = ts.get("paired_c1") or {}
    ts_c8 = levels.get(8, {}).get("images_per_s")
    in_process_c8 = {lv["concurrency"]: lv for lv in result["in_process"]["levels"]}.get(8, {}).get("images_per_s")
    return {
        "ts_images_per_s_c8": ts_c8,
        # within one run, so comparable across configurations where images/s drift with the machine
        "ts_of_in_process_c8": round(ts_c8 / in_process_c8, 3) if ts_c8 and in_process_c8 else None,
        "ts_p50_c1_ms": levels.get(1, {}).get("p50"),
        # TorchServe minus in-process, one request at a time, paired (bench.serving.run_paired_single)
        "ts_minus_in_process_c1_ms": paired.get("difference_p50"),
        "worker_cpu_ms_per_image": cpu.get("ts_worker"),
        "in_process_images_per_s_c8": in_process_c8,
        # the frontend's JVM warmed before measuring (bench.serving.warm_frontend); runs before it was not
        "frontend_warmed": bool(ts.get("frontend_warmup")),
    }


def write_report(report: dict[str, Any], out: Path) -> None:
    """``out`` (Markdown) and its ``.json`` (the record)."""
    from bench.harness import write_report as write_report_files

    write_report_files(out, report, render(report))


def render(report: dict[str, Any]) -> str:
    """docs/results/torchserve_config.md from its record alone."""
    from bench.sides import PAIRED_REQUESTS

    names = [n for n in VARIANTS if n in report["variants"]]
    models = sorted({m for v in report["variants"].values() for m in v["models"]})
    lines = [
        "# TorchServe configured by measurement",
        "",
        measured(report) + f": "
        f"bench.serving{' --scale ' + str(report['scale']) if 'scale' in report else ''} once per configuration "
        "(the frame models' TorchServe workers, torch threads per worker, batch size and delay changed together "
        "for every model), the same 32 real frames, nothing else running (1-minute load average before the "
        f"sweep {report['load_before']:.2f}).",
        "",
        "Each configuration ran at its own time (listed at the end), and this shared CPU's speed drifts by tens "
        "of percent between runs: compare images/s, p50 and CPU across columns with care. The paired row (what "
        "TorchServe adds to one request, measured against in-process in turn within the run) does not drift.",
        "",
        "TorchServe images/s at 8 requests in flight (higher is better):",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key, fmt in (
        ("ts_images_per_s_c8", "{:.1f}"),
        ("ts_of_in_process_c8", "{:.2f}"),
        ("ts_p50_c1_ms", "{:.0f}"),
        ("ts_minus_in_process_c1_ms", "{:.1f}"),
        ("worker_cpu_ms_per_image", "{:.0f}"),
    ):
        if key != "ts_images_per_s_c8":
            title = {
                "ts_of_in_process_c8": "TorchServe over in-process images/s at 8 in flight, the same configuration "
                "in the same run (drifts less than images/s)",
                "ts_p50_c1_ms": "p50 ms of a single request (c=1; lower is better)",
                "ts_minus_in_process_c1_ms": "what TorchServe adds to a single request, ms: median of "
                f"{PAIRED_REQUESTS} paired differences from in-process, measured in turn (runs before the paired "
                "measurement: -)",
                "worker_cpu_ms_per_image": "model worker CPU ms per image at c=8 (all its workers; lower is better)",
            }[key]
            lines += ["", title + ":", "", "| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for m in models:
            cells = []
            for n in names:
                value = report["variants"][n]["models"].get(m, {}).get(key)
                cells.append("-" if value is None else fmt.format(value))
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Measured (each configuration in its own run):", ""]
    lines += [
        f"- {n}: {report['variants'][n].get('when', report['when'])}, "
        + (
            "frontend warmed first"
            if all(r.get("frontend_warmed") for r in report["variants"][n]["models"].values())
            else "cold frontend (its JVM not yet compiled: about 1 ms more CPU per request, docs/guides/serving.md)"
        )
        for n in names
    ]
    lines += ["", report.get("reading", ""), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-store", type=Path, default=REPO / "model_store")
    ap.add_argument("--scale", type=float, default=0.5, help="bench.serving --scale (requests per level)")
    ap.add_argument("--out", type=Path, default=RESULTS / "torchserve_config.md")
    ap.add_argument("--variants", nargs="*", default=None, help="names of VARIANTS to run (default: all)")
    ap.add_argument("--merge", action="store_true", help="keep the other variants' results from --out's JSON")
    args = ap.parse_args(argv)

    import os

    from bench import serving
    from bench.layout import render_torchserve_config
    from core.host import cpu_model
    from core.registry import model_names
    from handlers.runtime import GATE_THREAD_ENV

    load_before = os.getloadavg()[0]
    gate_env = os.environ.get(GATE_THREAD_ENV)
    work = Path(tempfile.mkdtemp(prefix="ts-config-"))
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_before": load_before,
        "command": "make bench-ts-config",
        "scale": args.scale,
        "variants": {},
    }
    if args.merge and args.out.with_suffix(".json").is_file():
        earlier = json.loads(args.out.with_suffix(".json").read_text())
        # variants that are no longer defined (e.g. an earlier shipped configuration's name) are dropped
        report["variants"] = {n: {"when": earlier["when"]} | v for n, v in earlier["variants"].items() if n in VARIANTS}
        report["when"] = f"{earlier['when']} and {report['when']}"
    for name, (workers, threads, batch, delay, gate_thread) in VARIANTS.items():
        if args.variants and name not in args.variants:
            continue
        tag = f"{workers}-{threads}-{batch}-{delay}-{int(gate_thread)}"
        cfg = work / f"config-{tag}.properties"
        render_torchserve_config(CONFIG, workers, cfg, batch=batch, delay_ms=delay)
        out = work / f"serving-{tag}"
        _log(f"{name}: bench.serving ...")
        # read by ModelRuntime in process and, through TorchServe's environment, in its workers
        os.environ[GATE_THREAD_ENV] = "1" if gate_thread else "0"
        serving.main(
            [
                "--model-store",
                str(args.model_store),
                "--models",
                *model_names(),
                "--config",
                str(cfg),
                "--threads",
                str(threads),
                "--scale",
                str(args.scale),
                "--out",
                str(out),
            ]
        )
        result = json.loads(out.with_suffix(".json").read_text())
        report["variants"][name] = {
            "when": time.strftime("%Y-%m-%d %H:%M"),
            "workers": workers,
            "threads": threads,
            "batch": batch,
            "delay_ms": delay,
            "gate_thread": gate_thread,
            "models": {m: _row(r) for m, r in result["models"].items()},
        }
    if gate_env is None:
        os.environ.pop(GATE_THREAD_ENV, None)
    else:
        os.environ[GATE_THREAD_ENV] = gate_env
    write_report(report, args.out)
    _log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
