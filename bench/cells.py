"""The cell-level model's latency per frame, through TorchServe and in-process, on this machine.

Target (issue 11): p50 <= 300 ms per 640x480 frame through TorchServe on this CPU. Measured on the
BCCD validation frames (640x480, the size of the target) and on B-ALL frames (224x224, what the
portal sends most), one client at a time (a technologist's upload is one frame after another) and
two at a time (the worker count of this 2-core machine), after a warm-up pass:

- TorchServe: ``/predictions/wbc_cells`` with one keep-alive connection per client, the worker
  with ``LEUKEMIA_TORCH_THREADS = --threads`` and the settings of docker/torchserve/config.properties;
- in-process: the same :class:`handlers.cell_runtime.CellRuntime` on the files of the same .mar, so
  the difference is what serving costs (HTTP, the frontend, IPC);
- the handler's own stage times (decode, gate, segment, type) from the answers' ``timing_ms``.

Writes ``<out>.json`` (numbers, conditions, the command), ``<out>.md`` and ``<out>_latency.png``.

    python -m bench.cells --model-store model_store --out docs/results/benchmarks_cells      (make bench)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.harness import RESULTS, run_closed_loop, write_report
from bench.sides import extract
from core.host import cpu_model
from core.paths import ALL4_ORIGINAL
from core.registry import CLASS_NAMES
from handlers.cell_runtime import CellRuntime
from handlers.runtime import configure_threads
from serving.torchserve import ServerInfo, free_ports, start, stop
from training.cell_data import bccd_split

__all__ = ["frame_sets", "timed_client", "main"]

MODEL = "wbc_cells"
TARGET_P50_MS = 300.0


def frame_sets(n_all4: int = 40) -> dict[str, list[bytes]]:
    """BCCD validation frames (640x480) and B-ALL frames (224x224) as the bytes a client uploads."""
    _, val = bccd_split()
    all4 = []
    for i in range(n_all4):
        files = sorted((ALL4_ORIGINAL / CLASS_NAMES[i % len(CLASS_NAMES)]).glob("*.jpg"))
        all4.append(files[(i * 37) % len(files)].read_bytes())
    return {"bccd_640x480": [f.image.read_bytes() for f in val], "all4_224x224": all4}


def timed_client(info: ServerInfo, stages: list[dict[str, float]]) -> Callable[[bytes], None]:
    """An HTTP client (keep-alive connection per thread) that keeps each answer's stage times."""
    host, port = info.inference_url.removeprefix("http://").split(":")
    headers = {"Authorization": f"Bearer {info.inference_key}", "Content-Type": "application/octet-stream"}
    local = threading.local()
    lock = threading.Lock()

    def call(raw: bytes) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host, int(port), timeout=300)
        conn.request("POST", f"/predictions/{MODEL}", body=raw, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"TorchServe answered {resp.status}: {body[:200]!r}")
        with lock:
            stages.append(json.loads(body)["timing_ms"])

    return call


def _stage_medians(stages: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for s in stages for k in s})
    return {k: round(statistics.median(s[k] for s in stages if k in s), 1) for k in keys}


def _measure(call: Callable[[bytes], None], frames: Sequence[bytes], passes: int) -> dict[str, Any]:
    run_closed_loop(call, frames, 1, len(frames))  # warm-up pass, not counted
    return {str(c): run_closed_loop(call, frames, c, passes * len(frames)) for c in (1, 2)}


def plot(latencies: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(latencies), figsize=(5 * len(latencies), 3.4), squeeze=False)
    for ax, (name, sides) in zip(axes[0], latencies.items(), strict=True):
        for side, xs in sides.items():
            ax.hist(xs, bins=30, alpha=0.55, label=f"{side} (p50 {statistics.median(xs):.0f} ms)")
        ax.axvline(TARGET_P50_MS, color="k", ls="--", lw=1, label="target p50 300 ms")
        ax.set_title(f"wbc_cells, {name}, one client")
        ax.set_xlabel("latency per frame (ms)")
        ax.set_ylabel("requests")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _single_latencies(call: Callable[[bytes], None], frames: Sequence[bytes]) -> list[float]:
    out = []
    for raw in frames:
        t0 = time.perf_counter()
        call(raw)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def render_markdown(r: dict[str, Any], plot_name: str) -> str:
    lines = [
        "# wbc_cells: latency per frame",
        "",
        f"Measured {r['finished']} on {r['conditions']['cpu']} ({r['conditions']['cpu_count']} cores), "
        f"torch {r['conditions']['torch']}, {r['conditions']['threads']} torch thread(s) per worker. "
        f"Command: `{r['command']}`.",
        "",
        "| frames | side | clients | requests | p50 ms | p95 ms | p99 ms | frames/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, sides in r["results"].items():
        for side in ("torchserve", "in_process"):
            for c, lv in sides[side].items():
                lines.append(
                    f"| {name} | {side} | {c} | {lv['requests']} | {lv['p50']} | {lv['p95']} | {lv['p99']} | "
                    f"{lv['images_per_s']} |"
                )
    lines += ["", "Handler stage medians (ms, from the answers' `timing_ms`, TorchServe, one client):", ""]
    for name, sides in r["results"].items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in sides["stages_ms"].items()))
    p50 = r["results"]["bccd_640x480"]["torchserve"]["1"]["p50"]
    verdict = "met" if p50 <= TARGET_P50_MS else "missed"
    lines += [
        "",
        f"Target p50 <= {TARGET_P50_MS:.0f} ms per 640x480 frame through TorchServe: {p50} ms, **{verdict}**.",
        "",
        f"![latency distributions]({plot_name})",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-store", type=Path, default=Path("model_store"))
    ap.add_argument("--out", type=Path, default=RESULTS / "benchmarks_cells")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--passes", type=int, default=2, help="measured passes over each frame set per level")
    args = ap.parse_args(argv)
    mar = args.model_store / f"{MODEL}.mar"
    if not mar.is_file():
        raise SystemExit(f"no {mar} (`make archive` first)")
    sets = frame_sets()
    results: dict[str, Any] = {}
    latencies: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cells-") as tmp:
        work = Path(tmp)
        info = start(
            args.model_store, models=(MODEL,), workdir=work / "ts", ports=free_ports(), torch_threads=args.threads
        )
        try:
            for name, frames in sets.items():
                stages: list[dict[str, float]] = []
                call = timed_client(info, stages)
                print(
                    f"[{name}] TorchServe: {len(frames)} frames x {args.passes} passes at 1 and 2 clients", flush=True
                )
                served = _measure(call, frames, args.passes)
                latencies.setdefault(name, {})["TorchServe"] = _single_latencies(call, frames)
                results[name] = {
                    "torchserve": {str(c): v for c, v in served.items()},
                    "stages_ms": _stage_medians(stages),
                }
        finally:
            stop(info=info)
        configure_threads(args.threads)
        runtime = CellRuntime(extract(mar, work / "model"))
        for name, frames in sets.items():
            print(f"[{name}] in-process", flush=True)

            def local(raw: bytes) -> None:
                runtime.analyse({"body": raw})

            results[name]["in_process"] = _measure(local, frames, args.passes)
            latencies[name]["in-process"] = _single_latencies(local, frames)
    report = {
        "model": MODEL,
        "results": results,
        "conditions": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": args.threads,
        },
        "command": "python -m bench.cells " + " ".join(sys.argv[1:] if argv is None else argv),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    png = args.out.with_name(args.out.name + "_latency.png")
    write_report(args.out, report, render_markdown(report, png.name), indent=2)
    plot(latencies, png)
    for name, r in results.items():
        print(
            f"{name}: TorchServe p50 {r['torchserve']['1']['p50']} ms, in-process p50 {r['in_process']['1']['p50']} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
