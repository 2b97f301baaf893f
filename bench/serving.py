"""In-process PyTorch against TorchServe, per model, in the same run on the same machine.

For each model (one TorchServe started per model, so its cold start is measured alone):

- in-process ("the limit"): the same :class:`handlers.runtime.ModelRuntime` code on the weights from
  the same .mar, fed by ``c`` closed-loop client threads through an in-process dynamic batcher with
  the same batch size TorchServe uses (no HTTP, no IPC); torch intra-op threads = ``--threads``;
- TorchServe: ``c`` closed-loop HTTP clients (one keep-alive ``http.client`` connection each) against
  ``/predictions``,
  worker with ``LEUKEMIA_TORCH_THREADS = --threads``, batch size / delay from config.properties;
- a batch-size sweep of the forward pass alone (images/s at batch 1, 2, 4, 8) that chose the
  ``batchSize`` values in config.properties;
- cold start to ready (serving.torchserve.start for that model alone, and for all models together),
  worker and frontend (JVM) resident memory after the run.

Concurrency levels 1, 8, 32, each measured on both sides back to back (in-process, then TorchServe)
so that changes in background load hit both alike; images are real smear frames (224x224 JPEG) from ../shared/data.
Writes ``<out>.json`` (all numbers, conditions, the command), ``<out>.md`` and ``<out>_latency.png``
(bench.serving_report renders them from the record).

    python -m bench.serving --model-store model_store --out docs/results/benchmarks
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import torch

from bench.harness import RESULTS, conditions, run_closed_loop, run_interleaved_level, run_paired_single
from bench.serving_report import write_reports
from bench.sides import (
    LEVELS,
    PAIRED_REQUESTS,
    WARMUP_CONCURRENCY,
    WARMUP_REQUESTS,
    InProcess,
    batching,
    cpu_seconds,
    ensure_store,
    extract,
    frames,
    process_rss,
    requests_for,
    server_processes,
    torchserve_client,
    warm_frontend,
)
from core.registry import model_names
from serving.torchserve import start, stop

__all__ = ["bench_model", "main"]

REPO = Path(__file__).resolve().parent.parent


def bench_model(
    store: Path, model: str, images: Sequence[bytes], config: Path, threads: int, scale: float, work: Path, ports: dict
) -> dict:
    """Cold start, both sides' warm-up, the paired single requests, then each concurrency level on both
    sides in alternating blocks (:func:`run_interleaved_level`)."""
    bs, delay_ms = batching(config, model)
    ip = InProcess(extract(store / f"{model}.mar", work / f"ip-{model}"), images, bs, threads)
    info = start(store, [model], work / f"ts-{model}", config, ports=ports, torch_threads=threads)
    try:
        call = torchserve_client(info, model)
        procs = server_processes(info, model)
        # the steady state of a server that has been running: the frontend's JVM first (warm_frontend),
        # then both sides alike on real frames before any level is measured
        warm = warm_frontend(info, model, procs["frontend"])
        print(f"   frontend warm-up: {warm}", flush=True)
        rate = run_closed_loop(ip.batcher, images, WARMUP_CONCURRENCY, WARMUP_REQUESTS)["images_per_s"]
        run_closed_loop(call, images, WARMUP_CONCURRENCY, WARMUP_REQUESTS)
        paired = run_paired_single({"in_process": ip.batcher, "torchserve": call}, images, PAIRED_REQUESTS)
        print(f"   c=1 paired: {paired}", flush=True)
        ip_levels, ts_levels = [], []
        cpu: dict[str, float] = {}
        this = {"in_process": [psutil.Process()]}
        for c in LEVELS:
            n = requests_for(c, scale, rate)
            level = run_interleaved_level(
                {
                    "in_process": (ip.batcher, lambda: cpu_seconds(this)),
                    "torchserve": (call, lambda: cpu_seconds(procs)),
                },
                images,
                c,
                n,
            )
            ip_levels.append({k: v for k, v in level["in_process"].items() if k != "cpu_ms_per_image"})
            ts_levels.append({k: v for k, v in level["torchserve"].items() if k != "cpu_ms_per_image"})
            if c == 8:
                cpu.update(level["in_process"]["cpu_ms_per_image"])
                cpu.update({f"ts_{k}": v for k, v in level["torchserve"]["cpu_ms_per_image"].items()})
            print(f"   c={c}: in-process {ip_levels[-1]}\n        torchserve {ts_levels[-1]}", flush=True)
        print(f"   CPU ms per image at c=8: {cpu}", flush=True)
        ts = {
            "levels": ts_levels,
            "cold_start_s": info.ready_s,
            "cpu_ms_per_image_c8": cpu,
            "paired_c1": paired,
            "frontend_warmup": warm,
        }
        ts.update(process_rss(info, [model]))
    finally:
        stop(info=info)
        ip.batcher.close()
    return {"batch_size": bs, "max_batch_delay_ms": delay_ms, "in_process": ip.summary(ip_levels), "torchserve": ts}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-store", type=Path, default=REPO / "model_store")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--config", type=Path, default=REPO / "docker" / "torchserve" / "config.properties")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides")
    # (run with OMP_NUM_THREADS equal to --threads, as `make bench` does, so both sides match the worker)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the number of requests per level")
    ap.add_argument("--out", type=Path, default=RESULTS / "benchmarks")
    ap.add_argument("--render-only", action="store_true", help="rewrite <out>.md and the plot from <out>.json")
    args = ap.parse_args(argv)
    if args.render_only:
        write_reports(json.loads(Path(f"{args.out}.json").read_text()), args.out)
        return 0
    ports = {
        "inference": 18080,
        "management": 18081,
        "metrics": 18082,
        "grpc_inference": 17070,
        "grpc_management": 17071,
    }
    images = frames()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_str:
        tmp = Path(tmp_str)
        store, source = ensure_store(args.model_store, tmp)
        models = args.models or model_names()
        results: dict[str, Any] = {
            "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} python -m bench.serving "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "conditions": conditions(
                torch=torch.__version__,
                threads=args.threads,
                archives=source,
                images=f"{len(images)} real 224x224 JPEG smear frames",
            ),
            "models": {},
        }
        for m in models:
            print(f"== {m}", flush=True)
            results["models"][m] = bench_model(store, m, images, args.config, args.threads, args.scale, tmp, ports)
        info = start(store, models, tmp / "ts-all", args.config, ports=ports, torch_threads=args.threads)
        try:
            results["all_models"] = {"cold_start_s": info.ready_s, **process_rss(info, models)}
        finally:
            stop(info=info)
        results["conditions"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    earlier = Path(f"{args.out}.json")
    if earlier.is_file() and "runtimes" in (previous := json.loads(earlier.read_text())):
        results["runtimes"] = previous["runtimes"]  # bench.runtimes' section (it states when it ran) stays
    write_reports(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
