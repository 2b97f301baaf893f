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

Merges its results into ``<out>.json`` under ``runtimes``; ``bench.serving`` renders the section
into ``<out>.md``; the plot is ``<out>_runtimes.png``.

    OMP_NUM_THREADS=1 python -m bench.runtimes --model-store model_store --out docs/benchmarks
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

from bench.serving import _batching, _extract, _images, _level, percentiles
from bench.serving import targets as serving_targets
from core.decode import decode_request
from core.host import cpu_model
from core.registry import model_names
from handlers import backends
from handlers.runtime import ModelRuntime, configure_threads

__all__ = ["RUNTIMES_MEASURED", "bench_model", "render_section", "plot", "main"]

REPO = Path(__file__).resolve().parent.parent
RUNTIMES_MEASURED = ("eager", "onnxruntime", "openvino", "openvino-bf16")
STEPS = ("decode", "gate", "preprocess", "forward", "postprocess", "other")
#: the name of the served runtime's end-to-end run with the gate's statistics on the request path
GATE_INLINE = "{runtime}, gate inline"
LARGE_SIZE = (2560, 1920)
#: targets of issue 14 checked here
E2E_OF_FORWARD_TARGET = 0.8
SPEEDUP_TARGET = 1.5


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
        "single_request_p50_ms": percentiles(single)["p50"],
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
    batch, _ = _batching(config, model)
    model_dir = _extract(store / f"{model}.mar", work / model)
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


def _served_e2e(r: dict[str, Any]) -> dict[str, Any]:
    """The served runtime's end-to-end results (eager's where the served runtime was not measured)."""
    return r["end_to_end"].get(r["served"]) or r["end_to_end"]["eager"]


def _forward_cpu_share(r: dict[str, Any]) -> float | None:
    """The forward's CPU per image over the whole end-to-end path's (unrounded; None without CPU times).
    The forward alone runs on one thread: its wall time is its CPU time."""
    served = _served_e2e(r)
    if "cpu_ms_per_image" not in served:
        return None
    return 1000.0 / served["cpu_ms_per_image"] / r["forward"][served["runtime"]][f"images_per_s_batch{r['batch_size']}"]


def _served_checks(r: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets for one model from its results."""
    bs = r["batch_size"]
    fwd = r["forward"]
    served = _served_e2e(r)
    runtime = served["runtime"]
    best = fwd[r["fastest"]][f"images_per_s_batch{bs}"]
    forward = fwd[runtime][f"images_per_s_batch{bs}"]
    inline = r["end_to_end"].get(GATE_INLINE.format(runtime=runtime))
    return {
        "speedup_vs_eager": round(best / fwd["eager"][f"images_per_s_batch{bs}"], 2),
        "e2e_of_forward": round(served["images_per_s"] / forward, 2),
        "e2e_of_forward_cpu": None if (share := _forward_cpu_share(r)) is None else round(share, 2),
        "e2e_of_forward_gate_inline": round(inline["images_per_s"] / forward, 2) if inline else None,
    }


def _e2e_of_forward_cores_allow(r: dict[str, Any], cores: int) -> float | None:
    """The most the end-to-end path could reach of the forward's images/s with ``cores`` busy all the time:
    cores x the forward's CPU per image over the whole path's."""
    share = _forward_cpu_share(r)
    return None if share is None else round(cores * share, 2)


def _e2e_budget(r: dict[str, Any]) -> dict[str, float]:
    """How the served runtime's end-to-end time per image splits against the e2e/forward target: the time
    allowed besides the forward pass, what decode/preprocess/postprocess take, the gate, and the ratio
    without the gate."""
    steps = _served_e2e(r)["step_ms"]
    forward, gate = steps["forward"], steps["gate"]
    rest = sum(v for k, v in steps.items() if k not in ("forward", "gate", "gate_background"))
    allowed = forward * (1 / E2E_OF_FORWARD_TARGET - 1)
    return {
        "forward_ms": round(forward, 2),
        "allowed_ms": round(allowed, 2),
        "rest_ms": round(rest, 2),
        "gate_ms": round(gate, 2),
        "gate_budget_ms": round(allowed - rest, 2),
        "e2e_of_forward_without_gate": round(forward / (forward + rest), 2),
    }


def render_section(results: dict[str, Any]) -> list[str]:
    """The Markdown of the runtimes section (bench.serving.render_markdown appends it)."""
    rr = results["runtimes"]
    c = rr["conditions"]
    noisy = c["load_avg_before"][0] > 0.5
    serving = results.get("models", {})
    p50_c1 = serving_targets(results) if serving else {}
    lines = [
        "",
        "## Forward runtimes, the limit, and where an answer's time goes",
        "",
        f"Generated by `bench/runtimes.py` (`{rr['command']}`, started {rr['started']}; `make bench` runs it after "
        f"the serving benchmark above). {c['cpu']}, {c['cores']} cores, {c['threads']} thread(s); load average "
        f"before/after {c['load_avg_before']} / {c.get('load_avg_after')}; "
        f"{'the CPU was shared with other jobs, so absolute numbers are noisy' if noisy else 'quiet'}. "
        f"onnxruntime {c['onnxruntime']}, openvino {c['openvino']}, torch {c['torch']}.",
        "",
        f"![runtimes]({rr['plot']})",
        "",
        "Forward pass alone on the preprocessed real frames, images/s (batch 1 / the serving batch), and the "
        "largest difference of calibrated probabilities from eager over the frames (`dp`; eligible at "
        f"<= {backends.PARITY_TOLERANCE:g}). Every runtime is built from the archive's weights as a worker builds it "
        "(ONNX exported at start). bf16 OpenVINO is shown for information only: it is not a float32 result.",
        "",
        "| model | batch | runtime | images/s b1 | images/s batch | ms/batch | dp | export + load s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, r in rr["models"].items():
        bs = r["batch_size"]
        for name, f in r["forward"].items():
            if "error" in f:
                lines.append(f"| {m} | {bs} | {name} | failed: {f['error']} | | | | |")
                continue
            build = (f.get("export_s") or 0) + (f.get("load_s") or 0)
            lines.append(
                f"| {m} | {bs} | {name} | {f['images_per_s_batch1']} | {f[f'images_per_s_batch{bs}']} | "
                f"{f[f'ms_batch{bs}']} | {f['parity_max_abs_dp']:.1e} | {build:.2f} |"
            )
    lines += [
        "",
        "The limit and the served path, images/s at the serving batch (TorchServe and in-process columns of the "
        "serving benchmark are at c=8; the portal's upload-to-result time is measured separately):",
        "",
        "| model | eager forward | fastest forward (runtime) | served runtime | best/eager (>= 1.5) | "
        "in-process e2e | e2e/forward (>= 0.8) | e2e/forward, gate inline | e2e/forward by CPU time | "
        "serving bench in-process c=8 | TorchServe c=8 | TorchServe p50 c=1 ms | portal upload-to-result p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    portal = rr.get("portal_p50_ms") or {}
    for m, r in rr["models"].items():
        bs = r["batch_size"]
        chk = _served_checks(r)
        served = _served_e2e(r)
        s = serving.get(m, {})
        ip8 = _level(s["in_process"]["levels"], 8)["images_per_s"] if s else "-"
        ts8 = _level(s["torchserve"]["levels"], 8)["images_per_s"] if s else "-"
        ts1 = p50_c1[m]["p50_c1_ms"] if s else "-"  # paired with in-process where the run has it
        lines.append(
            f"| {m} | {r['forward']['eager'][f'images_per_s_batch{bs}']} | "
            f"{r['forward'][r['fastest']][f'images_per_s_batch{bs}']} ({r['fastest']}) | {served['runtime']} | "
            f"{chk['speedup_vs_eager']} {'OK' if chk['speedup_vs_eager'] >= SPEEDUP_TARGET else 'MISSED'} | "
            f"{served['images_per_s']} | {chk['e2e_of_forward']} "
            f"{'OK' if chk['e2e_of_forward'] >= E2E_OF_FORWARD_TARGET else 'MISSED'} | "
            f"{chk['e2e_of_forward_gate_inline'] or '-'} | {chk['e2e_of_forward_cpu'] or '-'} | "
            f"{ip8} | {ts8} | {ts1} | {portal.get(m, 'not measured here')} |"
        )
    lines += [
        "",
        "The served path computes the smear gate's statistics on a thread of the runtime's own while the image is "
        "preprocessed and the forward pass runs (`handlers/runtime.py`); `gate inline` is the same runtime with "
        "them on the request path. The thread shortens the wall time, not the work: `by CPU time` is the "
        "forward's ms per image over the end-to-end CPU ms per image of the whole process.",
    ]
    lines += [
        "",
        f"What the end-to-end target (>= {E2E_OF_FORWARD_TARGET} of the forward's images/s) leaves for the rest, from "
        "the served runtime's steps below, ms per image: the steps besides the forward pass may take at most "
        f"forward x (1/{E2E_OF_FORWARD_TARGET} - 1); `without the gate` is the ratio decode, preprocess and "
        "postprocess alone would allow (the floor of this design on this CPU). `the cores allow` is the most "
        f"the end-to-end path could reach with all {c['cores']} cores busy all the time: cores x the `by CPU "
        "time` ratio above (the forward runs on one thread; the gate thread and the request path share the "
        "cores), whatever the order of the steps.",
        "",
        "| model | forward | allowed besides the forward | decode + preprocess + postprocess + other | gate | "
        "gate budget left | e2e/forward without the gate | e2e/forward the cores allow |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, r in rr["models"].items():
        b = _e2e_budget(r)
        cores_allow = _e2e_of_forward_cores_allow(r, c["cores"]) or "-"
        lines.append(
            f"| {m} | {b['forward_ms']} | {b['allowed_ms']} | {b['rest_ms']} | {b['gate_ms']} | "
            f"{b['gate_budget_ms']} | {b['e2e_of_forward_without_gate']} | {cores_allow} |"
        )
    for m, r in rr["models"].items():
        served, fastest, bs = r["served"], r["fastest"], r["batch_size"]
        if served != fastest and served in r["forward"] and "error" not in r["forward"][served]:
            f, s_ = r["forward"][fastest], r["forward"][served]
            lines += [
                "",
                f"{m}: the fastest at batch {bs} in this run was {fastest} "
                f"({f[f'images_per_s_batch{bs}']} vs {served}'s {s_[f'images_per_s_batch{bs}']} images/s, "
                f"{f[f'images_per_s_batch{bs}'] / s_[f'images_per_s_batch{bs}'] - 1:.0%} more); at batch 1 "
                f"{served} {s_['images_per_s_batch1']} vs {f['images_per_s_batch1']}. `SERVED_RUNTIME` keeps "
                f"{served} where the two are this close (run-to-run differences on this shared CPU are of this size).",
            ]
    runtimes_in = {r2.get("runtime") for r in serving.values() for r2 in [r.get("in_process", {})]}
    if serving and runtimes_in == {None}:
        lines += [
            "",
            "(The serving benchmark's numbers in this file predate the served runtimes: its in-process and "
            "TorchServe sides ran PyTorch eager. `make bench` measures both with the served runtime.)",
        ]
    lines += [
        "",
        "Where the time of one answer goes, in-process, ms per image (share of the wall time per image) on the "
        "224x224 frames in batches of the serving size; `forward` is the batch's forward split over its images, "
        "`other` the rest of the wall time (stacking, batching, the answer's dict); `gate` is what the answer "
        "waited for the gate, `gate thread` what the statistics took there, overlapping the other steps (not a "
        "share of the wall time):",
        "",
        "| model | runtime | images/s | CPU ms/image | " + " | ".join(STEPS) + " | gate thread |",
        "|---|---|---|---|" + "---|" * (len(STEPS) + 1),
    ]
    for m, r in rr["models"].items():
        for name, e in r["end_to_end"].items():
            cells = [f"{e['step_ms'][k]:.2f} ({e['step_share'][k]:.0%})" for k in STEPS]
            background = e["step_ms"].get("gate_background")
            cells.append("-" if background is None else f"{background:.2f}")
            cpu = e.get("cpu_ms_per_image", "-")
            lines.append(f"| {m} | {name} | {e['images_per_s']} | {cpu} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Large inputs (real frames enlarged to {LARGE_SIZE[0]}x{LARGE_SIZE[1]} JPEGs, quality 90): decoding in "
        "JPEG draft mode to the smallest DCT scale whose sides hold twice the side the model and the gate (128) "
        "need (`handlers.runtime.DRAFT_MARGIN`), and what it saves in the later steps, ms for one frame; `dp` is "
        "how far the draft moves the probabilities from the full decode's, max and median over the frames:",
        "",
        "| model | draft size | decode full | decode draft | gate full | gate draft | preprocess full | "
        "preprocess draft | dp max / median | answer's steps (draft) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, r in rr["models"].items():
        li = r["large_input"]
        steps = ", ".join(f"{k} {v:.1f}" for k, v in li["answer_step_ms"].items() if k != "other")
        lines.append(
            f"| {m} | {li['draft_decoded_size'][0]}x{li['draft_decoded_size'][1]} | {li['decode_full_ms']} | "
            f"{li['decode_draft_ms']} | {li['gate_full_ms']} | {li['gate_draft_ms']} | {li['preprocess_full_ms']} | "
            f"{li['preprocess_draft_ms']} | {li['draft_vs_full_max_abs_dp']:.1e} / "
            f"{li.get('draft_vs_full_median_abs_dp', float('nan')):.1e} | {steps} |"
        )
    lines += [
        "",
        "Memory (resident MB each adds in a fresh process, after one forward of a batch of 4): the eager model "
        "stays loaded in every worker (reference for the start-up parity check, the fallback, and Grad-CAM for "
        "/explanations), the runtime's session comes on top: "
        + "; ".join(
            f"{m} eager {r['memory_mb'].get('eager_mb')}, onnxruntime +{r['memory_mb'].get('onnxruntime_mb')}, "
            f"openvino +{r['memory_mb'].get('openvino_mb')}"
            for m, r in rr["models"].items()
        )
        + ".",
        "",
    ]
    return lines


def plot(rr: dict[str, Any], serving: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(rr["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.8), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        r = rr["models"][m]
        bs = r["batch_size"]
        labels, values, colours = [], [], []
        for name, f in r["forward"].items():
            if "error" not in f:
                labels.append(f"{name}\nforward")
                values.append(f[f"images_per_s_batch{bs}"])
                colours.append("tab:blue" if f.get("eligible") else "tab:gray")
        for name, e in r["end_to_end"].items():
            labels.append(f"{name}\nin-process e2e")
            values.append(e["images_per_s"])
            colours.append("tab:green")
        if m in serving:
            ran = serving[m]["in_process"].get("runtime")  # absent: a serving run from before the runtimes
            labels.append(f"TorchServe\nc=8 ({ran or 'eager'})")
            values.append(_level(serving[m]["torchserve"]["levels"], 8)["images_per_s"])
            colours.append("tab:orange")
        ax.bar(range(len(values)), values, color=colours)
        ax.set_xticks(range(len(values)), labels, rotation=90, fontsize=7)
        ax.set_title(f"{m} (batch {bs})")
        ax.set_ylabel("images/s")
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-store", type=Path, default=REPO / "model_store")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--config", type=Path, default=REPO / "docker" / "torchserve" / "config.properties")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=2.0, help="time per forward measurement")
    ap.add_argument("--images", type=int, default=8, help="real frames per class")
    ap.add_argument("--portal-json", type=Path, default=None, help='{"<model>": upload-to-result p50 ms}')
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    ap.add_argument("--memory-probe", nargs=2, metavar=("MODEL_DIR", "RUNTIME"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_probe:
        _memory_probe_main(Path(args.memory_probe[0]), args.memory_probe[1], args.threads)
        return 0
    configure_threads(args.threads)
    images = _images(args.images)
    out_json = Path(f"{args.out}.json")
    results = json.loads(out_json.read_text()) if out_json.is_file() else {}
    import onnxruntime
    import openvino

    rr: dict[str, Any] = {
        "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} python -m bench.runtimes "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "conditions": {
            "cpu": cpu_model(),
            "cores": psutil.cpu_count(),
            "threads": args.threads,
            "load_avg_before": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "openvino": openvino.__version__,
            "images": f"{len(images)} real 224x224 JPEG smear frames",
        },
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, indent=2))
    plot(rr, results.get("models", {}), Path(f"{args.out}_runtimes.png"))
    if "models" in results:  # the serving benchmark's file: re-render its Markdown with this section
        from bench.serving import _write_reports

        _write_reports(results, args.out)
    else:
        Path(f"{args.out}.md").write_text("# Forward runtimes\n" + "\n".join(render_section(results)))
    print(f"wrote {out_json} (runtimes) and {args.out}_runtimes.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
