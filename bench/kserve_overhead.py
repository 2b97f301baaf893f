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
server handles the whole base64 body.

Then the project's own KServe predictor (kserve_predictor/: KServe's model server running the runtimes,
no TorchServe), per model alone in its process as deployed (one InferenceService per model), against
the same TorchServe and the model loaded in this process (:class:`bench.serving.InProcessBatcher` for a
frame model, one call at a time for the cell model), in the same run: single requests with the three in
turn (:func:`bench.serving.run_paired_single`; ``predictor adds`` is the median paired difference to
in-process), and 8 requests in flight, the three taking turns in blocks
(:func:`bench.serving.run_interleaved_level`). Last, :func:`layouts`: every served model in one predictor
process against one process per model, memory and images/s with 8 in flight spread over the models.
Writes ``<out>.json`` and ``<out>.md``; ``--predictor-only`` measures the predictor's part alone and keeps
the KServe rows of an earlier run's ``<out>.json``.

    python -m bench.kserve_overhead --model-store model_store --out docs/results/kserve_overhead
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psutil

from bench.harness import RESULTS, command_line, markdown_table, measured, run_header, write_report
from bench.runtimes import _enlarged
from bench.serving_report import LARGE_SIZE
from core.registry import cell_model_names, served_model_names
from core.v2 import image_request

REPO = Path(__file__).resolve().parent.parent
LARGE = "large frames"
#: the predictor's sides, in the order of its tables (the paired difference is the second minus the first)
SIDES = ("in_process", "predictor", "torchserve")


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
    from bench.harness import run_paired_single

    for raw in images[:4]:  # both paths' first answers
        direct(raw)
        through(raw)
    cpu0 = sum(kserve.cpu_times()[:2])
    paired = run_paired_single({"torchserve": direct, "kserve": through}, images, pairs)
    paired["kserve_cpu_ms_per_request"] = round((sum(kserve.cpu_times()[:2]) - cpu0) * 1000.0 / pairs, 2)
    paired["request_bytes"] = len(json.dumps(image_request(images[0])))
    return paired


@contextmanager
def predictor(store: Path, models: Sequence[str], log_path: Path) -> Iterator[tuple[str, psutil.Process]]:
    """The KServe predictor serving ``models`` (:func:`bench.kserve_server.start_predictor`): its URL and process."""
    from bench.kserve_server import start_predictor
    from serving.torchserve import free_ports

    url, proc = start_predictor(store, models, free_ports()["inference"], log_path)
    try:
        yield url, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def in_process(store: Path, model: str, work: Path) -> Iterator[tuple[Callable[[bytes], Any], Callable[[bytes], Any]]]:
    """``model`` loaded in this process from its archive, one torch thread: (one request, a request among
    concurrent ones). A frame model batches as TorchServe's configuration says (:class:`InProcessBatcher`);
    the cell model answers one request at a time, as its one worker does."""
    from bench.sides import InProcessBatcher, batching, extract
    from handlers.cell_runtime import CellRuntime
    from handlers.runtime import ModelRuntime, configure_threads
    from serving.torchserve import DEFAULT_CONFIG

    configure_threads(1)
    model_dir = extract(store / f"{model}.mar", work / f"in-process-{model}")
    if model in cell_model_names():
        cells = CellRuntime(model_dir)
        lock = threading.Lock()

        def analyse(raw: bytes) -> Any:
            with lock:
                return cells.analyse({"body": raw}, annotate=True)

        yield analyse, analyse
        return
    runtime = ModelRuntime(model_dir)
    batcher = InProcessBatcher(runtime, batching(DEFAULT_CONFIG, model)[0])
    try:
        yield (lambda raw: runtime.predict([{"body": raw}])), batcher
    finally:
        batcher.close()


def measure_predictor(
    ts: Any, store: Path, model: str, images: Sequence[bytes], pairs: int, requests_c8: int, work: Path
) -> dict[str, Any]:
    """One model: the predictor alone in its process, TorchServe and in-process, single and at c=8."""
    from bench.harness import run_interleaved_level, run_paired_single
    from bench.sides import cpu_seconds, server_processes

    params = {"annotate": True} if model in cell_model_names() else None
    me = psutil.Process()
    with (
        predictor(store, [model], work / f"predictor-{model}.log") as (url, kp),
        in_process(store, model, work) as (
            single,
            concurrent,
        ),
    ):
        calls = {"in_process": single, "predictor": v2_client(url, model, params)}
        calls["torchserve"] = v2_client(ts.inference_url, model, params)
        for raw in images[:4]:
            for call in calls.values():
                call(raw)
        paired = run_paired_single({k: calls[k] for k in SIDES}, images, pairs)
        ts_procs = server_processes(ts, model)
        sides = {
            "in_process": (concurrent, lambda: {"process": sum(me.cpu_times()[:2])}),
            "predictor": (calls["predictor"], lambda: {"process": sum(kp.cpu_times()[:2])}),
            "torchserve": (calls["torchserve"], lambda: {"process": sum(cpu_seconds(ts_procs).values())}),
        }
        c8 = run_interleaved_level(sides, images, 8, requests_c8)
        return {"single": paired, "c8": c8, "predictor_rss_mb": round(kp.memory_info().rss / 2**20, 1)}


def _round_robin(calls: dict[str, Callable[[bytes], Any]]) -> Callable[[bytes], Any]:
    """One call that sends each request to the next model in turn."""
    order = itertools.cycle(list(calls.values()))
    lock = threading.Lock()

    def call(raw: bytes) -> Any:
        with lock:
            fn = next(order)
        return fn(raw)

    return call


def layouts(store: Path, models: Sequence[str], images: Sequence[bytes], requests_c8: int, work: Path) -> dict:
    """Every model in one predictor process against one process per model: resident memory once warm, and
    images/s with 8 requests in flight sent to the models in turn (the two layouts taking turns in blocks)."""
    from bench.harness import run_interleaved_level

    def params(m: str) -> dict[str, Any] | None:
        return {"annotate": True} if m in cell_model_names() else None

    with ExitStack() as stack:
        url, one = stack.enter_context(predictor(store, models, work / "predictor-all.log"))
        per = {m: stack.enter_context(predictor(store, [m], work / f"predictor-alone-{m}.log")) for m in models}
        all_in_one = _round_robin({m: v2_client(url, m, params(m)) for m in models})
        one_each = _round_robin({m: v2_client(u, m, params(m)) for m, (u, _) in per.items()})
        for raw in images[: 2 * len(models)]:
            all_in_one(raw)
            one_each(raw)
        procs = [p for _, p in per.values()]
        sides = {
            "all_in_one": (all_in_one, lambda: {"process": sum(one.cpu_times()[:2])}),
            "one_per_model": (one_each, lambda: {"process": sum(sum(p.cpu_times()[:2]) for p in procs)}),
        }
        c8 = run_interleaved_level(sides, images, 8, requests_c8)
        return {
            "models": list(models),
            "rss_mb": {
                "all_in_one": round(one.memory_info().rss / 2**20, 1),
                "one_per_model": {m: round(p.memory_info().rss / 2**20, 1) for m, (_, p) in per.items()},
            },
            "c8": c8,
        }


def measure_kserve(
    ts: Any, models: Sequence[str], images: Sequence[bytes], args: Any, report: dict, work: Path
) -> None:
    """KServe's model server in front of ``ts``: per model, then large frames to the first (``report["models"]``)."""
    from bench.kserve_server import start_model_server
    from serving.torchserve import free_ports

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


def render(report: dict[str, Any]) -> str:
    lines = [
        "# What KServe's model server adds in front of TorchServe",
        "",
        measured(report) + f" "
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
    if "predictor" in report:
        lines += ["", *render_predictor(report["predictor"])]
    return "\n".join(lines) + "\n"


def render_predictor(run: dict[str, Any]) -> list[str]:
    """The predictor's tables: per model against TorchServe and in-process, then the two layouts."""

    def c8(r: dict[str, Any], side: str) -> Any:
        return r["c8"][side]["images_per_s"]

    lines = [
        "## The project's KServe predictor (no TorchServe)",
        "",
        f"Measured {run['when']} on {run['cpu']} ({run['cores']} cores) with `{run['command']}`: per model the "
        "KServe predictor (kserve_predictor/) alone in its process, as deployed, TorchServe (the same archives) "
        "and the model loaded in the benchmark's process, one torch thread each, in the same run. Single: one "
        f"request at a time, the three in turn, {run['pairs']} rounds; `predictor adds` is the median of the "
        "paired differences to in-process (HTTP, KServe's request parsing, base64). c=8: 8 requests in flight, "
        f"{run['requests_c8']} per side, the sides taking turns in blocks (bench/kserve_overhead.py says how).",
        "",
        *markdown_table(
            ["model", "in-process p50 ms", "predictor p50 ms", "TorchServe p50 ms", "predictor adds p50 ms"]
            + ["c=8 in-process img/s", "c=8 predictor img/s", "c=8 TorchServe img/s", "predictor / TorchServe"]
            + ["predictor RSS MB"],
            (
                [name, *(r["single"][s]["p50"] for s in SIDES), r["single"]["difference_p50"]]
                + [c8(r, s) for s in SIDES]
                + [f"{c8(r, 'predictor') / c8(r, 'torchserve'):.2f}", r["predictor_rss_mb"]]
                for name, r in run["models"].items()
            ),
        ),
    ]
    if "layouts" in run:
        lay = run["layouts"]
        rss = lay["rss_mb"]
        memory = {"all_in_one": rss["all_in_one"], "one_per_model": round(sum(rss["one_per_model"].values()), 1)}
        lines += [
            "",
            f"One predictor process serving {', '.join(lay['models'])} against one process per model: resident "
            "memory once warm (one per model: the sum), and 8 requests in flight sent to the models in turn, "
            f"{run['layout_requests']} per layout, the two taking turns in blocks.",
            "",
            *markdown_table(
                ["layout", "resident MB", "c=8 img/s", "p50 ms", "p95 ms", "CPU ms per image"],
                (
                    [name.replace("_", " "), memory[name], lay["c8"][name]["images_per_s"], lay["c8"][name]["p50"]]
                    + [lay["c8"][name]["p95"], lay["c8"][name]["cpu_ms_per_image"]["process"]]
                    for name in ("all_in_one", "one_per_model")
                ),
            ),
        ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-store", type=Path, default=REPO / "model_store")
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--large-pairs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=RESULTS / "kserve_overhead")
    ap.add_argument("--predictor-requests", type=int, default=64, help="requests per side at c=8")
    ap.add_argument("--layout-requests", type=int, default=100, help="requests per layout at c=8")
    ap.add_argument("--predictor-only", action="store_true", help="keep the KServe rows of <out>.json")
    ap.add_argument("--models", default="", help="comma-separated (default: every served model)")
    args = ap.parse_args(argv)

    from bench.kserve_server import KSERVE_PYTHON, torchserve_config
    from bench.sides import frames
    from serving.torchserve import free_ports, start, stop

    models = [m for m in args.models.split(",") if m] or served_model_names()
    images = frames()
    work = Path(tempfile.mkdtemp(prefix="kserve-overhead-"))
    probe = [str(KSERVE_PYTHON), "-c", "import importlib.metadata as m; print(m.version('kserve'))"]
    version = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    if args.predictor_only:
        report: dict[str, Any] = json.loads(args.out.with_suffix(".json").read_text())
    else:
        report = {
            **run_header(command_line("bench.kserve_overhead", argv)),
            "kserve": version,
            "pairs": args.pairs,
            "large_pairs": args.large_pairs,
            "models": {},
        }
    command = command_line("bench.kserve_overhead", argv)
    run: dict[str, Any] = {**run_header(command), "pairs": args.pairs, "requests_c8": args.predictor_requests}
    run |= {"layout_requests": args.layout_requests, "models": {}}
    store = args.model_store.resolve()
    ts = start(store, models, work / "ts", config=torchserve_config(work / "config.properties"), ports=free_ports())
    try:
        if not args.predictor_only:
            measure_kserve(ts, models, images, args, report, work)
        for model in models:
            print(f"== predictor: {model}", flush=True)
            run["models"][model] = measure_predictor(
                ts, store, model, images, args.pairs, args.predictor_requests, work
            )
            print(f"   {run['models'][model]}", flush=True)
    finally:
        stop(info=ts)
    print("== predictor layouts", flush=True)
    run["layouts"] = layouts(store, models, images, args.layout_requests, work)
    print(f"   {run['layouts']}", flush=True)
    report["predictor"] = run
    write_report(args.out, report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
