"""What TorchServe adds to a single request, and where it goes (`make bench-ts-overhead`).

For each frame model: a TorchServe with that model alone and the shipped configuration, its frontend
warmed as in bench.serving (:func:`bench.serving.warm_frontend`), then ``--requests`` real frames sent
one at a time. TorchServe's own Prometheus counters are read before and after them:

- ``ts_inference_latency_microseconds``: from a request's arrival at the frontend to its answer;
- ``ts_queue_latency_microseconds``: the time it waited in the model's queue, which holds the
  ``maxBatchDelay`` a lone request waits for batch-mates;

and every answer's ``timing_ms.total`` is the handler's own time (decode, gate, preprocess, forward,
postprocess). Mean ms per request, in the order a request meets them:

- ``http``: what the client waited minus the frontend's latency (netty, the inference key's check,
  the bytes in and out);
- ``queue``: the queue latency;
- ``worker_round_trip``: the frontend's latency minus the queue and the handler (the frontend-worker
  socket, TorchServe's Python around the handler, the JSON body);
- ``torchserve_total``: the three together, what TorchServe adds to the handler's time.

bench.serving's paired comparison (TorchServe minus in-process, one request each in turn) also holds
the handler's own steps running in another process; this splits off what TorchServe itself costs.
Two counters of one model are read with a regular expression (no Prometheus client library is
installed for that). Writes ``<out>.json`` and ``<out>.md``.

    python -m bench.ts_overhead --model-store model_store --out docs/results/ts_overhead
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from bench.harness import RESULTS, command_line, markdown_table, measured, run_header, write_report
from core.registry import model_names

REPO = Path(__file__).resolve().parent.parent
LATENCY, QUEUE, REQUESTS = (
    "ts_inference_latency_microseconds",
    "ts_queue_latency_microseconds",
    "ts_inference_requests_total",
)
COUNTERS = (LATENCY, QUEUE, REQUESTS)
PARTS = ("http", "queue", "worker_round_trip", "torchserve_total")


def counter(text: str, name: str, model: str) -> float:
    """The value of counter ``name`` for ``model`` in TorchServe's Prometheus text (its label sets end
    with a comma: ``name{model_name="m",model_version="default",hostname="h",} 12.5``)."""
    found = re.search(rf'^{re.escape(name)}\{{model_name="{re.escape(model)}",[^}}]*\}} (\S+)$', text, re.M)
    if found is None:
        raise KeyError(f"{name} for {model} not in the metrics")
    return float(found.group(1))


def breakdown(client_ms: Sequence[float], handler_ms: Sequence[float], delta: dict[str, float]) -> dict[str, Any]:
    """Mean ms per request of each part (see the module docstring) from the client's and the handler's
    times and the counters' increase over the same requests."""
    n = delta[REQUESTS]
    if n != len(client_ms):
        raise RuntimeError(f"TorchServe counted {n:.0f} requests, the client sent {len(client_ms)}")
    client, handler = statistics.fmean(client_ms), statistics.fmean(handler_ms)
    frontend, queue = delta[LATENCY] / n / 1000.0, delta[QUEUE] / n / 1000.0
    parts = {
        "client": client,
        "handler": handler,
        "http": client - frontend,
        "queue": queue,
        "worker_round_trip": frontend - queue - handler,
        "torchserve_total": client - handler,
    }
    return {"requests": int(n), **{k: round(v, 2) for k, v in parts.items()}}


def read_counters(metrics_url: str, model: str) -> dict[str, float]:
    """:data:`COUNTERS` of ``model`` from TorchServe's metrics endpoint (there from its first answer on)."""
    text = requests.get(f"{metrics_url}/metrics", timeout=10).text
    return {name: counter(text, name, model) for name in COUNTERS}


def measure(store: Path, model: str, images: Sequence[bytes], n: int, work: Path) -> dict[str, Any]:
    from bench.sides import server_processes, torchserve_client, warm_frontend
    from serving.torchserve import free_ports, start, stop

    info = start(store, [model], work / f"ts-{model}", ports=free_ports())  # beside a running `make serve`
    try:
        warm_frontend(info, model, server_processes(info, model)["frontend"])
        post = torchserve_client(info, model)
        for raw in images:  # the worker's first answers
            post(raw)
        before = read_counters(info.metrics_url, model)
        client, handler = [], []
        for i in range(n):
            t0 = time.perf_counter()
            body = json.loads(post(images[i % len(images)]))
            client.append((time.perf_counter() - t0) * 1000.0)
            handler.append(float(body["timing_ms"]["total"]))
        after = read_counters(info.metrics_url, model)
    finally:
        stop(info=info)
    return breakdown(client, handler, {k: after[k] - before[k] for k in COUNTERS})


def render(report: dict[str, Any]) -> str:
    lines = [
        "# What TorchServe adds to a single request",
        "",
        measured(report) + f": "
        f"per model, a TorchServe with that model alone (shipped configuration), its frontend warmed, then "
        f"{report['requests']} real frames one at a time. Mean ms per request; `http`, `queue` and `worker round "
        "trip` come from TorchServe's Prometheus counters and each answer's `timing_ms.total` (bench/ts_overhead.py "
        "says how). The queue holds the `maxBatchDelay` a lone request waits for batch-mates (`delay`, from the "
        "shipped configuration).",
        "",
        *markdown_table(
            ["model", "client", "handler", "TorchServe adds", "HTTP in/out", "queue", "delay", "worker round trip"],
            (
                [m, r["client"], r["handler"], r["torchserve_total"], r["http"], r["queue"]]
                + [r["max_batch_delay_ms"], r["worker_round_trip"]]
                for m, r in report["models"].items()
            ),
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-store", type=Path, default=REPO / "model_store")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--out", type=Path, default=RESULTS / "ts_overhead")
    args = ap.parse_args(argv)

    from bench.sides import batching, frames
    from serving.torchserve import DEFAULT_CONFIG

    images = frames()
    work = Path(tempfile.mkdtemp(prefix="ts-overhead-"))
    report: dict[str, Any] = {
        **run_header(command_line("bench.ts_overhead", argv)),
        "requests": args.requests,
        "models": {},
    }
    for model in args.models or model_names():
        print(f"== {model}", flush=True)
        report["models"][model] = measure(args.model_store.resolve(), model, images, args.requests, work)
        report["models"][model]["max_batch_delay_ms"] = batching(DEFAULT_CONFIG, model)[1]
        print(f"   {report['models'][model]}", flush=True)
    write_report(args.out, report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
