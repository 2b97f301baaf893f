"""The forward runtimes, the limit they set, and where an answer's time goes, per frame model.

For each trained archive (issue 14 items 1-3), in one run, with ``--threads`` intra-op threads:

- **forward only** (preprocessed real frames): PyTorch eager (the runtime before), ONNX Runtime and
  OpenVINO f32, each built from the archive's weights exactly as a worker builds it
  (:func:`handlers.backends.build_forward`), and OpenVINO bf16 for information; ms per batch and
  images/s at batch 1 and at the serving batch size; export and load/compile seconds; the resident
  memory each runtime adds beside the eager model (which stays loaded for Grad-CAM);
- **parity**: max |p - p_eager| of the calibrated probabilities over the real frames; a runtime is
  eligible when it is <= :data:`handlers.backends.PARITY_TOLERANCE`; ``fastest`` is the eligible one
  with the most images/s at the serving batch (``SERVED_RUNTIME`` is what the workers use);
- **in-process end to end**: :class:`handlers.runtime.ModelRuntime` answering the frames in batches
  of the serving size, with eager and with the served runtime (and that runtime once more with the
  smear gate's statistics on the request path instead of the gate thread): images/s, the process's
  CPU ms per image (every thread), single-request p50, and each step's share of the time per image
  (decode, gate, preprocess, forward, postprocess, other) from the answers' ``timing_ms``, beside
  the time the statistics took on the gate thread, overlapping those steps;
- **large input**: a 2560x1920 JPEG made from a real frame: decode with and without draft mode, the
  steps of one answer, and the probability difference the draft makes;
- **TorchServe end to end** from the serving benchmark's results in ``<out>.json`` (the same
  ``make bench`` run writes them first), and a column for the portal's upload-to-result time, which
  is measured separately (``--portal-json FILE``: ``{"<model>": p50_ms, ...}``).

Merges its results into ``<out>.json`` under ``runtimes``; bench.serving_report renders the page
``<out>.md`` again with this section; the plot is ``<out>_runtimes.png``.

    OMP_NUM_THREADS=1 python -m bench.runtimes --model-store model_store --out docs/results/benchmarks
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from PIL import Image

from bench.harness import RESULTS, conditions, latency_summary
from bench.serving_report import GATE_INLINE, LARGE_SIZE, write_reports
from bench.sides import batching, extract, frames
from core.decode import decode_request
from core.registry import model_names
from handlers import backends
from handlers.runtime import ModelRuntime, configure_threads

__all__ = ["RUNTIMES_MEASURED", "bench_model", "main"]

REPO = Path(__file__).resolve().parent.parent
RUNTIMES_MEASURED = ("eager", "onnxruntime", "openvino", "openvino-bf16")


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _timed(fn: Callable[[], object], seconds: float, min_reps: int = 3) -> float:
    """Mean ms per call over at least ``seconds`` (after one warm-up call)."""
    fn()
    reps, t0 = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - t0 < seconds:
        fn()
        reps += 1
    return (time.perf_counter() - t0) / reps * 1000.0


def _probs(logits: torch.Tensor, temperature: float) -> np.ndarray:
    return torch.softmax(logits.float() / temperature, dim=-1).numpy()


def forward_only(
    rt: ModelRuntime, tensors: torch.Tensor, batch: int, threads: int, seconds: float
) -> dict[str, dict[str, Any]]:
    """Every runtime's forward on the same preprocessed frames: speed, parity with eager, cost."""
    out: dict[str, dict[str, Any]] = {}
    eager = backends.eager_forward(rt.model)
    ref = _probs(torch.cat([eager(tensors[i : i + batch])[0] for i in range(0, len(tensors), batch)]), rt.temperature)
    for name in RUNTIMES_MEASURED:
        try:
            fwd = eager if name == "eager" else backends.build_forward(name, rt.model, rt.spec.input_size, threads)
        except Exception as exc:  # noqa: BLE001 - report a runtime that cannot be built, measure the rest
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        row: dict[str, Any] = dict(fwd.info)
        got = _probs(torch.cat([fwd(tensors[i : i + batch])[0] for i in range(0, len(tensors), batch)]), rt.temperature)
        row["parity_max_abs_dp"] = float(f"{np.abs(got - ref).max():.3g}")
        row["eligible"] = row["parity_max_abs_dp"] <= backends.PARITY_TOLERANCE and name in backends.RUNTIMES
        for bs in sorted({1, batch}):
            ms = _timed(functools.partial(fwd, tensors[:bs]), seconds)
            row[f"ms_batch{bs}"] = round(ms, 2)
            row[f"images_per_s_batch{bs}"] = round(bs * 1000.0 / ms, 2)
        out[name] = row
        print(f"   forward {name}: {row}", flush=True)
    return out


def end_to_end(rt: ModelRuntime, images: Sequence[bytes], batch: int) -> dict[str, Any]:
    """``rt.predict`` over the frames in batches of ``batch``: images/s, c=1 p50, each step's share."""
    rows = [{"body": raw} for raw in images]
    rt.predict(rows[:batch])  # warm-up
    t0, cpu0 = time.perf_counter(), time.process_time()
    answers: list[Any] = []
    for i in range(0, len(rows), batch):
        answers += rt.predict(rows[i : i + batch])
    wall_ms = (time.perf_counter() - t0) * 1000.0
    cpu_ms = (time.process_time() - cpu0) * 1000.0
    bodies = [a for a in answers if isinstance(a, dict)]
    if len(bodies) != len(rows):
        raise RuntimeError(
            f"{len(rows) - len(bodies)} frames refused: {[a for a in answers if not isinstance(a, dict)]}"
        )
    per_image = wall_ms / len(rows)
    steps = _step_ms(bodies, per_image)
    single = []
    for row in rows[:16]:
        t1 = time.perf_counter()
        rt.predict([row])
        single.append((time.perf_counter() - t1) * 1000.0)
    return {
        "runtime": rt.runtime_name,
        "gate_thread": rt.gate_thread is not None,
        "images_per_s": round(len(rows) * 1000.0 / wall_ms, 2),
        "ms_per_image": round(per_image, 2),
        "cpu_ms_per_image": round(cpu_ms / len(rows), 2),
        "single_request_p50_ms": latency_summary(single)["p50"],
        "step_ms": steps,
        "step_share": {k: round(v / per_image, 3) for k, v in steps.items()},
    }


def _step_ms(bodies: Sequence[dict[str, Any]], per_image_ms: float) -> dict[str, float]:
    """Mean ms per image of each step from the answers' timing_ms (the batch's forward split over its images)."""

    def mean(key: str) -> float:
        return statistics.fmean(float(b["timing_ms"][key]) for b in bodies)

    steps = {
        "decode": mean("decode"),
        "gate": mean("gate"),
        "preprocess": mean("preprocess"),
        "forward": statistics.fmean(float(b["timing_ms"]["inference"]) / b["batch_size"] for b in bodies),
        "postprocess": mean("postprocess"),
    }
    steps["other"] = max(0.0, per_image_ms - sum(steps.values()))
    if all("gate_background" in b["timing_ms"] for b in bodies):  # off the answer's path: not in `other`
        steps["gate_background"] = mean("gate_background")
    return {k: round(v, 3) for k, v in steps.items()}


def _enlarged(frame: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(frame)).convert("RGB").resize(LARGE_SIZE, Image.Resampling.BICUBIC).save(
        buf, "JPEG", quality=90
    )
    return buf.getvalue()


def large_input(rt: ModelRuntime, frames: Sequence[bytes], seconds: float) -> dict[str, Any]:
    """Real frames enlarged to 2560x1920 JPEGs: decode with/without draft mode, one answer's steps, and
    how far the draft moves the probabilities from a full decode's (over every frame)."""
    raws = [_enlarged(f) for f in frames]
    raw = raws[0]
    side = rt.draft_side()
    full = decode_request({"body": raw})
    draft = decode_request({"body": raw}, draft_side=side)
    out: dict[str, Any] = {
        "size": list(LARGE_SIZE),
        "bytes": len(raw),
        "draft_side": side,
        "draft_decoded_size": list(draft.image.size),
        "decode_full_ms": round(_timed(lambda: decode_request({"body": raw}), seconds), 2),
        "decode_draft_ms": round(_timed(lambda: decode_request({"body": raw}, draft_side=side), seconds), 2),
        "gate_full_ms": round(_timed(lambda: rt.gate_check(full, None), seconds), 2),
        "gate_draft_ms": round(_timed(lambda: rt.gate_check(draft, None), seconds), 2),
        "preprocess_full_ms": round(_timed(lambda: rt.transform(full.image), seconds), 2),
        "preprocess_draft_ms": round(_timed(lambda: rt.transform(draft.image), seconds), 2),
    }
    gaps = []
    for r in raws:
        x = torch.stack([rt.transform(decode_request({"body": r}, draft_side=d).image) for d in (None, side)])
        p = _probs(rt.forward(x)[0], rt.temperature)
        gaps.append(float(np.abs(p[0] - p[1]).max()))
    out["frames"] = len(raws)
    out["draft_vs_full_max_abs_dp"] = float(f"{max(gaps):.3g}")
    out["draft_vs_full_median_abs_dp"] = float(f"{statistics.median(gaps):.3g}")
    rt.predict([{"body": raw}])  # warm-up
    bodies = [rt.predict([{"body": raw}])[0] for _ in range(3)]
    if not all(isinstance(b, dict) for b in bodies):
        raise RuntimeError(f"large frame refused: {bodies[0]}")
    total = statistics.fmean(float(b["timing_ms"]["total"]) for b in bodies)  # type: ignore[index]
    out["answer_step_ms"] = _step_ms(bodies, total)  # type: ignore[arg-type]
    return out


def memory_probe(model_dir: Path, runtime: str, threads: int) -> dict[str, float]:
    """In a fresh process: resident MB added by the eager model (ModelRuntime on eager) and then by
    ``runtime`` built beside it, each after one forward of a serving-size batch."""
    cmd = [sys.executable, "-m", "bench.runtimes", "--memory-probe", str(model_dir), runtime, "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def _memory_probe_main(model_dir: Path, runtime: str, threads: int) -> None:
    import gc

    configure_threads(threads)
    import onnxruntime  # noqa: F401  (imports count as neither model's memory)
    import openvino  # noqa: F401

    os.environ[backends.RUNTIME_ENV] = "eager"
    rss0 = _rss_mb()
    rt = ModelRuntime(model_dir)
    x = backends.probe_batch(rt.spec.input_size, n=4)
    rt.forward(x)
    gc.collect()
    rss1 = _rss_mb()
    fwd = backends.build_forward(runtime, rt.model, rt.spec.input_size, threads)
    fwd(x)
    gc.collect()
    rss2 = _rss_mb()
    print(json.dumps({"eager_mb": round(rss1 - rss0, 1), f"{runtime}_mb": round(rss2 - rss1, 1)}))


def bench_model(
    store: Path, model: str, images: Sequence[bytes], config: Path, threads: int, seconds: float, work: Path
) -> dict:
    batch, _ = batching(config, model)
    model_dir = extract(store / f"{model}.mar", work / model)
    memory: dict[str, float] = {}
    for name in ("onnxruntime", "openvino"):
        memory.update(memory_probe(model_dir, name, threads))  # eager_mb: the last probe's
    os.environ[backends.RUNTIME_ENV] = "eager"
    rt = ModelRuntime(model_dir)
    tensors = torch.stack([rt.prepare({"body": raw}).tensor for raw in images])
    result: dict[str, Any] = {"batch_size": batch, "memory_mb": memory}
    print(f"   memory MB (fresh processes): {memory}", flush=True)
    result["forward"] = forward_only(rt, tensors, batch, threads, seconds)
    eligible = {k: v for k, v in result["forward"].items() if v.get("eligible")}
    result["fastest"] = max(eligible, key=lambda k: eligible[k][f"images_per_s_batch{batch}"])
    result["served"] = backends.SERVED_RUNTIME.get(model, "eager")
    e2e = {"eager": end_to_end(rt, images, batch)}
    del os.environ[backends.RUNTIME_ENV]
    rt.selection = backends.select_forward(rt.model, model, rt.spec.input_size, threads, rt.temperature)
    if rt.runtime_name != "eager":
        e2e[rt.runtime_name] = end_to_end(rt, images, batch)
    rt.use_gate_thread(False)
    e2e[GATE_INLINE.format(runtime=rt.runtime_name)] = end_to_end(rt, images, batch)
    rt.use_gate_thread(True)
    result["end_to_end"] = e2e
    print(f"   end to end: {e2e}", flush=True)
    result["large_input"] = large_input(rt, images[:16], seconds / 2)
    print(f"   large input: {result['large_input']}", flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-store", type=Path, default=REPO / "model_store")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--config", type=Path, default=REPO / "docker" / "torchserve" / "config.properties")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=2.0, help="time per forward measurement")
    ap.add_argument("--images", type=int, default=8, help="real frames per class")
    ap.add_argument("--portal-json", type=Path, default=None, help='{"<model>": upload-to-result p50 ms}')
    ap.add_argument("--out", type=Path, default=RESULTS / "benchmarks")
    ap.add_argument("--memory-probe", nargs=2, metavar=("MODEL_DIR", "RUNTIME"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_probe:
        _memory_probe_main(Path(args.memory_probe[0]), args.memory_probe[1], args.threads)
        return 0
    configure_threads(args.threads)
    images = frames(args.images)
    out_json = Path(f"{args.out}.json")
    results = json.loads(out_json.read_text()) if out_json.is_file() else {}
    import onnxruntime
    import openvino

    rr: dict[str, Any] = {
        "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} python -m bench.runtimes "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "conditions": conditions(
            threads=args.threads,
            torch=torch.__version__,
            onnxruntime=onnxruntime.__version__,
            openvino=openvino.__version__,
            images=f"{len(images)} real 224x224 JPEG smear frames",
        ),
        "models": {},
        "plot": f"{args.out.name}_runtimes.png",
    }
    if args.portal_json:
        rr["portal_p50_ms"] = json.loads(args.portal_json.read_text())
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as tmp:
        for m in args.models or model_names():
            print(f"== {m}", flush=True)
            rr["models"][m] = bench_model(
                args.model_store, m, images, args.config, args.threads, args.seconds, Path(tmp)
            )
    rr["conditions"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    results["runtimes"] = rr
    write_reports(results, args.out)  # the page again, with this section (bench.serving_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
