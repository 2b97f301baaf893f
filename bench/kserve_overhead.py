"""What KServe's model server adds in front of TorchServe, per request (`make bench-kserve`).

A KServe predictor pod runs KServe's model server in front of TorchServe: every request is parsed,
validated and forwarded by it, and its answer re-encoded. Here: one TorchServe with the KServe layout's
configuration (:func:`bench.kserve_server.torchserve_config`) serving every served model, and KServe's own
model server (kserve 0.21.0, :func:`bench.kserve_server.start_model_server`) forwarding the Open Inference
Protocol (v2) to it. For each model the same v2 request (a real 224x224 frame in base64; the cell
model with ``"annotate": true``, as the portal asks) goes directly to TorchServe's own
``/v2/models/{model}/infer`` and through KServe, one request at a time, the two sides taking turns
(:func:`bench.serving.run_paired_single`), so that both meet the same machine. KServe's process CPU is
read before and after: only its own side's requests reach it. A last row sends real frames enlarged to
2560x1920 JPEGs (quality 90, as a lab camera may write them) to the first model, because the model
server handles the whole base64 body. Writes ``<out>.json`` and ``<out>.md``.

    python -m bench.kserve_overhead --model-store model_store --out docs/kserve_overhead
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from bench.report import markdown_table, run_header, write_report
from bench.runtimes import LARGE_SIZE, _enlarged
from core.registry import cell_model_names, served_model_names
from core.v2 import image_request

REPO = Path(__file__).resolve().parent.parent
LARGE = "large frames"


def v2_client(base_url: str, model: str, parameters: dict[str, Any] | None = None) -> Callable[[bytes], bytes]:
    """A light client (one keep-alive connection per thread) that sends one image as a v2 request to
    ``{base_url}/v2/models/{model}/infer`` and returns the answer's body; any other status than 200 raises."""
    host, port = base_url.removeprefix("http://").split(":")
    path = f"/v2/models/{model}/infer"
    local = threading.local()

    def call(raw: bytes) -> bytes:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host, int(port), timeout=300)
        body = json.dumps(image_request(raw, parameters)).encode()
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{base_url} answered {resp.status}: {answer[:200]!r}")
        return answer

    return call


def measure(
    direct: Callable[[bytes], bytes],
    through: Callable[[bytes], bytes],
    images: Sequence[bytes],
    pairs: int,
    kserve: psutil.Process,
) -> dict[str, Any]:
    """Paired single requests (direct, then through KServe, in turn) and KServe's CPU ms per request."""
    from bench.serving import run_paired_single

    for raw in images[:4]:  # both paths' first answers
        direct(raw)
        through(raw)
    cpu0 = sum(kserve.cpu_times()[:2])
    paired = run_paired_single({"torchserve": direct, "kserve": through}, images, pairs)
    paired["kserve_cpu_ms_per_request"] = round((sum(kserve.cpu_times()[:2]) - cpu0) * 1000.0 / pairs, 2)
    paired["request_bytes"] = len(json.dumps(image_request(images[0])))
    return paired


def render(report: dict[str, Any]) -> str:
    lines = [
        "# What KServe's model server adds in front of TorchServe",
        "",
        f"Measured {report['when']} on {report['cpu']} ({report['cores']} cores) with `{report['command']}` "
        f"(kserve {report['kserve']}): one TorchServe with the KServe layout's configuration, KServe's own "
        "model server forwarding v2 to it, and per model the same v2 request sent directly to TorchServe's "
        f"`/v2/models/{{model}}/infer` and through KServe, one at a time, the two in turn, {report['pairs']} "
        f"pairs ({report['large_pairs']} for `{LARGE}`: real frames enlarged to {LARGE_SIZE[0]}x{LARGE_SIZE[1]} "
        "JPEGs, quality 90; bench/kserve_overhead.py says how). `KServe adds` is the median of the paired "
        "differences; `KServe CPU` is its process's CPU time per request it forwarded, which a predictor pod "
        "spends beside TorchServe's.",
        "",
        *markdown_table(
            ["model", "request KB", "direct p50 ms", "through KServe p50 ms", "KServe adds p50 ms"]
            + ["KServe CPU ms per req."],
            (
                [name, f"{r['request_bytes'] / 1024:.0f}", r["torchserve"]["p50"], r["kserve"]["p50"]]
                + [r["difference_p50"], r["kserve_cpu_ms_per_request"]]
                for name, r in report["models"].items()
            ),
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-store", type=Path, default=REPO / "model_store")
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--large-pairs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "kserve_overhead")
    args = ap.parse_args(argv)

    from bench.kserve_server import KSERVE_PYTHON, start_model_server, torchserve_config
    from bench.serving import _images
    from serving.torchserve import free_ports, start, stop

    models = served_model_names()
    images = _images()
    work = Path(tempfile.mkdtemp(prefix="kserve-overhead-"))
    probe = [str(KSERVE_PYTHON), "-c", "import importlib.metadata as m; print(m.version('kserve'))"]
    version = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    report: dict[str, Any] = {
        **run_header("make bench-kserve"),
        "kserve": version,
        "pairs": args.pairs,
        "large_pairs": args.large_pairs,
        "models": {},
    }
    ts = start(
        args.model_store.resolve(),
        models,
        work / "ts",
        config=torchserve_config(work / "config.properties"),
        ports=free_ports(),
    )
    proc = None
    try:
        url, proc = start_model_server(ts.inference_url, models, free_ports()["inference"], work / "kserve.log")
        kserve = psutil.Process(proc.pid)
        for model in models:
            params = {"annotate": True} if model in cell_model_names() else None
            direct, through = v2_client(ts.inference_url, model, params), v2_client(url, model, params)
            print(f"== {model}", flush=True)
            report["models"][model] = measure(direct, through, images, args.pairs, kserve)
            print(f"   {report['models'][model]}", flush=True)
        first = models[0]
        large = [_enlarged(raw) for raw in images[:8]]
        print(f"== {first}, {LARGE}", flush=True)
        report["models"][f"{first}, {LARGE}"] = measure(
            v2_client(ts.inference_url, first), v2_client(url, first), large, args.large_pairs, kserve
        )
        print(f"   {report['models'][f'{first}, {LARGE}']}", flush=True)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        stop(info=ts)
    write_report(args.out, report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
