"""The two sides the serving benchmarks compare, and what they share: the model in this process behind an
in-process dynamic batcher (no HTTP, no IPC), and TorchServe through light HTTP clients; the processes
whose CPU and memory are counted; the archives and real frames they answer.

The method's constants (warm-up, level lengths, the paired comparison) are here, so that the scenarios
(bench.serving, bench.runtimes, bench.cells) and the report (bench.serving_report) state the same ones.
"""

from __future__ import annotations

import http.client
import json
import math
import queue
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import requests
import torch

from bench.harness import closed_loop, latency_summary
from core.paths import ALL4_ORIGINAL
from core.registry import CLASS_NAMES, model_names
from handlers.runtime import ModelRuntime, configure_threads
from serving.torchserve import ServerInfo

__all__ = [
    "InProcess",
    "InProcessBatcher",
    "batching",
    "cpu_seconds",
    "ensure_store",
    "extract",
    "forward_sweep",
    "frames",
    "process_rss",
    "requests_for",
    "server_processes",
    "torchserve_client",
    "warm_frontend",
]

DATA = ALL4_ORIGINAL
LEVELS = (1, 8, 32)
#: requests each side answers (at this concurrency) before the first measured level
WARMUP_REQUESTS, WARMUP_CONCURRENCY = 96, 4
#: TorchServe's frontend is warmed first with this many refused requests (:func:`warm_frontend`), sent by
#: this many clients in this many chunks
FRONTEND_WARMUP_REQUESTS, FRONTEND_WARMUP_CONCURRENCY, FRONTEND_WARMUP_CHUNKS = 12000, 8, 6
#: a body the handler refuses as ``not_an_image`` (415) after the whole request path, about a frame's size
NOT_AN_IMAGE = b"not an image\n" * 2300
#: each side of a level answers at least this long (a fast model gets more requests, from the in-process
#: warm-up's images/s), so that its images/s and CPU per image are not a fraction of a second's (64
#: requests at c=8 took mobilenetv3_lstm 0.5 s, and its ratio at c=8 varied 0.75-0.93 between runs)
MIN_LEVEL_SECONDS = 4.0
#: single requests per side in the paired c=1 comparison (:func:`run_paired_single`)
PAIRED_REQUESTS = 64
#: TorchServe's single-request p50 may exceed the in-process one by this much (issue 14's target)
P50_ALLOWANCE_MS = 5.0


class InProcessBatcher:
    """A dynamic batcher in the calling process: what TorchServe's batching does, minus HTTP and IPC."""

    def __init__(self, runtime: ModelRuntime, batch_size: int) -> None:
        self.runtime, self.batch_size = runtime, batch_size
        self.q: queue.Queue[tuple[bytes, threading.Event, list[Any]] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.batch_size:
                try:
                    nxt = self.q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.q.put(None)
                    break
                batch.append(nxt)
            results = self.runtime.predict([{"body": raw} for raw, _, _ in batch])
            for (_, done, slot), res in zip(batch, results, strict=True):
                slot.append(res)
                done.set()

    def __call__(self, raw: bytes) -> None:
        done, slot = threading.Event(), []  # type: ignore[var-annotated]
        self.q.put((raw, done, slot))
        done.wait()
        if not isinstance(slot[0], dict):
            raise RuntimeError(f"in-process request failed: {slot[0]}")

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()


def requests_for(level: int, scale: float, images_per_s: float = 0.0) -> int:
    """Requests per side at ``level``: a minimum per level, and at least :data:`MIN_LEVEL_SECONDS` at
    ``images_per_s`` (both times ``scale``)."""
    least = max(level * 3, int({1: 24, 8: 64, 32: 128}[level] * scale))
    return max(least, math.ceil(images_per_s * MIN_LEVEL_SECONDS * scale))


def forward_sweep(runtime: ModelRuntime, images: Sequence[bytes], sizes: Sequence[int] = (1, 2, 4, 8)) -> dict:
    """Images/s of preprocessing + forward at each batch size (the basis of batchSize)."""
    out = {}
    prepared = [runtime.prepare({"body": raw}).tensor for raw in images[:8]]
    for bs in sizes:
        x = torch.stack([prepared[i % len(prepared)] for i in range(bs)])
        runtime.forward(x)  # warm-up
        reps = max(2, 16 // bs)
        t0 = time.perf_counter()
        for _ in range(reps):
            runtime.forward(x)
        out[str(bs)] = round(bs * reps / (time.perf_counter() - t0), 2)
    return out


class InProcess:
    """The in-process side: the model loaded in this process, behind :class:`InProcessBatcher`."""

    def __init__(self, model_dir: Path, images: Sequence[bytes], batch_size: int, threads: int) -> None:
        configure_threads(threads)
        self.rss0 = psutil.Process().memory_info().rss
        t0 = time.perf_counter()
        self.runtime = ModelRuntime(model_dir)
        self.load_s = time.perf_counter() - t0
        for raw in images[:2]:
            self.runtime.predict([{"body": raw}])  # warm-up
        self.sweep = forward_sweep(self.runtime, images)
        single = []
        for raw in images[:16]:
            t1 = time.perf_counter()
            self.runtime.predict([{"body": raw}])
            single.append((time.perf_counter() - t1) * 1000)
        self.single = latency_summary(single)
        self.batcher = InProcessBatcher(self.runtime, batch_size)

    def summary(self, levels: list[dict]) -> dict:
        return {
            "runtime": self.runtime.runtime_name,
            "load_s": round(self.load_s, 2),
            "forward_sweep": self.sweep,
            "single_request_ms": self.single,
            "levels": levels,
            "rss_mb_delta": round((psutil.Process().memory_info().rss - self.rss0) / 2**20, 1),
        }


def torchserve_client(info: ServerInfo, model: str, expect: int = 200) -> Callable[[bytes], bytes]:
    """A light HTTP client (one keep-alive http.client connection per thread) for /predictions that returns
    the answer's body; an answer with another status than ``expect`` raises."""
    host, port = info.inference_url.removeprefix("http://").split(":")
    path = f"/predictions/{model}"
    headers = {"Authorization": f"Bearer {info.inference_key}", "Content-Type": "application/octet-stream"}
    local = threading.local()

    def call(raw: bytes) -> bytes:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host, int(port), timeout=300)
        conn.request("POST", path, body=raw, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != expect:
            raise RuntimeError(f"TorchServe answered {resp.status}: {body[:200]!r}")
        return body

    return call


def warm_frontend(
    info: ServerInfo,
    model: str,
    frontend: list[psutil.Process],
    total: int = FRONTEND_WARMUP_REQUESTS,
    chunks: int = FRONTEND_WARMUP_CHUNKS,
) -> dict[str, Any]:
    """Bring TorchServe's frontend to the state of a server that has been running: its JVM interprets,
    then compiles the request path only after thousands of calls. Measured in six rounds of 1,600 real
    frames from start (mobilenetv3_lstm, 8 clients): the frontend's CPU per request fell from 1.4 to
    0.4 ms and the worker's wait between two batches from 2.1 to 1.4 ms (docs/guides/serving.md); so after the
    usual hundred warm-up requests a benchmark measures the interpreter. Refused requests take the whole
    path (HTTP in, the batch aggregator, the worker, a 415 out) at a fraction of a frame's cost: after
    12,000 of them (about 7 s) the first real round ran as warm as after 5,000-6,000 real frames (0.5 ms,
    1.2 ms). Returns the frontend's CPU ms per request in each chunk (its warm-up curve)."""
    call = torchserve_client(info, model, expect=415)
    per_chunk = total // chunks
    curve = []
    t0 = time.perf_counter()
    for _ in range(chunks):
        cpu0 = cpu_seconds({"frontend": frontend})
        closed_loop(call, [NOT_AN_IMAGE], FRONTEND_WARMUP_CONCURRENCY, per_chunk)
        spent = cpu_seconds({"frontend": frontend})["frontend"] - cpu0["frontend"]
        curve.append(round(spent * 1000.0 / per_chunk, 3))
    return {
        "requests": per_chunk * chunks,
        "seconds": round(time.perf_counter() - t0, 1),
        "frontend_cpu_ms_per_request_by_chunk": curve,
    }


def server_processes(info: ServerInfo, model: str) -> dict[str, list[psutil.Process]]:
    """The processes whose CPU time is counted: all of the model's workers, the frontend, this client."""
    mgmt = {"Authorization": f"Bearer {info.management_key}"}
    desc = requests.get(f"{info.management_url}/models/{model}", headers=mgmt, timeout=10).json()[0]
    java = [p for p in psutil.Process(info.pid).children(recursive=True) if p.name() == "java"]
    return {
        "worker": [psutil.Process(int(w["pid"])) for w in desc["workers"]],
        "frontend": java[:1],
        "client": [psutil.Process()],
    }


def cpu_seconds(procs: dict[str, list[psutil.Process]]) -> dict[str, float]:
    return {k: sum(sum(p.cpu_times()[:2]) for p in group) for k, group in procs.items()}


def rss_mb(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def process_rss(info: ServerInfo, models: Sequence[str]) -> dict[str, Any]:
    mgmt = {"Authorization": f"Bearer {info.management_key}"}
    workers = {}
    for m in models:
        desc = requests.get(f"{info.management_url}/models/{m}", headers=mgmt, timeout=10).json()[0]
        workers[m] = [rss_mb(int(w["pid"])) for w in desc["workers"]]
    java = [p for p in psutil.Process(info.pid).children(recursive=True) if p.name() == "java"]
    return {"worker_rss_mb": workers, "frontend_rss_mb": rss_mb(java[0].pid) if java else None}


def extract(mar: Path, dest: Path) -> Path:
    with zipfile.ZipFile(mar) as z:
        z.extractall(dest, [n for n in z.namelist() if n.startswith("model/") or n == "model_card.json"])
    return dest


def batching(config: Path, model: str) -> tuple[int, int]:
    """The model's ``batchSize`` and ``maxBatchDelay`` (ms) in ``config`` (1 and 0 where it has none)."""
    from serving.torchserve import parse_properties

    props = dict(parse_properties(config.read_text()))
    per_model = json.loads(props.get("models", "{}")).get(model, {})
    for v in per_model.values():
        return int(v.get("batchSize", 1)), int(v.get("maxBatchDelay", 0))
    return 1, 0


def frames(n_per_class: int = 8) -> list[bytes]:
    out = []
    for i in range(n_per_class):
        for cls in CLASS_NAMES:
            files = sorted((DATA / cls).glob("*.jpg"))
            out.append(files[(i * 37) % len(files)].read_bytes())
    return out


def ensure_store(store: Path | None, work: Path) -> tuple[Path, str]:
    """The trained archives to measure; the benchmark measures nothing else (no stand-ins)."""
    missing = [m for m in model_names() if store is None or not (store / f"{m}.mar").is_file()]
    if store is None or missing:
        raise SystemExit(f"no trained archive for {', '.join(missing)} in {store} (`make archive` first)")
    return store, "trained archives from " + str(store)
