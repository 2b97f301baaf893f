"""The benchmark harness's runner (the paired single-request comparison, interleaved levels), the targets
the serving report evaluates, and each committed result page rendered again from its record."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from bench.harness import run_paired_single
from bench.serving_report import targets


def test_paired_single_requests_take_turns_and_measure_the_difference() -> None:
    order: list[str] = []

    def side(name: str, seconds: float):
        def call(raw: bytes) -> None:
            order.append(name)
            time.sleep(seconds)

        return call

    result = run_paired_single({"in_process": side("a", 0.002), "torchserve": side("b", 0.008)}, [b"x"], pairs=6)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b", "b", "a"]  # who goes first flips
    assert result["pairs"] == 6
    assert result["in_process"]["p50"] < result["torchserve"]["p50"]
    assert 4.0 < result["difference_p50"] < 12.0


def _levels(c1: float, c8_ips: float) -> list[dict]:
    return [
        {"concurrency": 1, "p50": c1, "images_per_s": 1000 / c1},
        {"concurrency": 8, "p50": 0, "images_per_s": c8_ips},
    ]


def test_targets_judge_c1_on_the_paired_comparison_when_the_run_has_it() -> None:
    paired = {"pairs": 64, "in_process": {"p50": 20.0}, "torchserve": {"p50": 24.0}, "difference_p50": 4.1}
    results = {
        "models": {
            "m": {
                "in_process": {"levels": _levels(10.0, 100.0)},  # a faster minute than the paired requests met
                "torchserve": {"levels": _levels(30.0, 92.0), "paired_c1": paired},
            }
        }
    }
    t = targets(results)["m"]
    assert (t["p50_c1_ms"], t["in_process_forward_ms"], t["p50_c1_paired_difference_ms"]) == (24.0, 20.0, 4.1)
    assert t["p50_ok"]
    assert t["throughput_ok"] and t["throughput_ratio_c8"] == 0.92
    del results["models"]["m"]["torchserve"]["paired_c1"]  # an older run: the levels, one after the other
    t = targets(results)["m"]
    assert (t["p50_c1_ms"], t["in_process_forward_ms"], t["p50_ok"]) == (30.0, 10.0, False)


def test_interleaved_level_alternates_blocks_and_counts_each_sides_cpu_in_its_own_blocks() -> None:
    from bench.harness import run_interleaved_level

    order: list[str] = []
    clock = {"a": 0.0, "b": 0.0}

    def side(name: str, cpu_per_call: float):
        def call(raw: bytes) -> None:
            order.append(name)
            clock[name] += cpu_per_call  # this side's "processes" spend CPU only while it is measured

        return call, lambda: {f"{name}_proc": clock[name]}

    level = run_interleaved_level({"a": side("a", 0.001), "b": side("b", 0.004)}, [b"x"], concurrency=2, total=24)
    assert level["a"]["rounds"] == level["b"]["rounds"] == 4  # 24 // (3 requests x 2 clients)
    blocks = [order[i] for i in range(0, 48, 6)]
    assert blocks == ["a", "b", "b", "a", "a", "b", "b", "a"] and all(
        order[i : i + 6] == [order[i]] * 6 for i in range(0, 48, 6)
    )
    assert level["a"]["requests"] == level["b"]["requests"] == 24
    assert level["a"]["cpu_ms_per_image"] == {"a_proc": 1.0} and level["b"]["cpu_ms_per_image"] == {"b_proc": 4.0}


def test_e2e_budget_names_the_floor_without_the_gate() -> None:
    from bench.serving_report import E2E_OF_FORWARD_TARGET, _e2e_budget

    steps = {"decode": 0.5, "gate": 5.0, "preprocess": 0.9, "forward": 10.0, "postprocess": 0.1, "other": 0.0}
    for background in (None, 4.0):  # the gate thread's time overlaps the steps: never part of the rest
        if background is not None:
            steps["gate_background"] = background
        r = {"served": "onnxruntime", "end_to_end": {"onnxruntime": {"runtime": "onnxruntime", "step_ms": steps}}}
        b = _e2e_budget(r)
        assert b["allowed_ms"] == round(10.0 * (1 / E2E_OF_FORWARD_TARGET - 1), 2) == 2.5
        assert b["rest_ms"] == 1.5 and b["gate_budget_ms"] == 1.0  # the gate may cost 1 ms, it costs 5
        assert b["e2e_of_forward_without_gate"] == round(10.0 / 11.5, 2)


def test_served_checks_report_the_gate_inline_and_the_cpu_ratio() -> None:
    from bench.serving_report import GATE_INLINE, _served_checks

    forward = {"eager": {"images_per_s_batch4": 50.0}, "onnxruntime": {"images_per_s_batch4": 100.0}}
    e2e = {
        "onnxruntime": {"runtime": "onnxruntime", "images_per_s": 90.0, "cpu_ms_per_image": 12.5},
        GATE_INLINE.format(runtime="onnxruntime"): {"runtime": "onnxruntime", "images_per_s": 60.0},
    }
    chk = _served_checks(
        {"batch_size": 4, "forward": forward, "fastest": "onnxruntime", "served": "onnxruntime", "end_to_end": e2e}
    )
    assert chk == {
        "speedup_vs_eager": 2.0,
        "e2e_of_forward": 0.9,
        "e2e_of_forward_cpu": 0.8,
        "e2e_of_forward_gate_inline": 0.6,
    }


def test_ts_config_report_says_which_runs_had_a_warm_frontend(tmp_path) -> None:
    from bench.ts_config import VARIANTS, _row, write_report

    def result(warmed: bool) -> dict:
        ts = {"levels": [{"concurrency": 8, "images_per_s": 50.0}, {"concurrency": 1, "p50": 20.0}]}
        if warmed:
            ts["frontend_warmup"] = {"requests": 12000, "frontend_cpu_ms_per_request_by_chunk": [1.2, 0.4]}
        return {"torchserve": ts, "in_process": {"levels": [{"concurrency": 8, "images_per_s": 52.0}]}}

    shipped, older = list(VARIANTS)[:2]
    report = {
        "when": "w",
        "cpu": "cpu",
        "cores": 2,
        "load_before": 0.1,
        "command": "make bench-ts-config",
        "variants": {
            shipped: {"when": "today", "models": {"m": _row(result(True))}},
            older: {"when": "yesterday", "models": {"m": _row(result(False))}},
        },
    }
    write_report(report, tmp_path / "cfg.md")
    md = (tmp_path / "cfg.md").read_text()
    assert f"- {shipped}: today, frontend warmed first" in md
    assert f"- {older}: yesterday, cold frontend" in md
    # TorchServe over in-process at c=8 within each run: 50 / 52
    after_title = md.split("TorchServe over in-process images/s at 8 in flight")[1].splitlines()
    assert next(line for line in after_title if line.startswith("| m |")) == "| m | 0.96 | 0.96 |"


def test_the_committed_benchmark_report_is_what_its_results_render_to() -> None:
    """docs/results/benchmarks.md is generated from docs/results/benchmarks.json: the two never drift apart, and
    the reading
    states the CPU-bound ceiling of TorchServe against in-process from the run's own CPU numbers."""
    import json
    from pathlib import Path

    from bench.serving_report import render_markdown

    docs = Path(__file__).resolve().parents[2] / "docs" / "results"
    results = json.loads((docs / "benchmarks.json").read_text())
    md = render_markdown(results, "benchmarks_latency.png")
    assert md == (docs / "benchmarks.md").read_text()
    m, r = next(iter(results["models"].items()))
    c = r["torchserve"]["cpu_ms_per_image_c8"]
    ceiling = c["in_process"] / (c["ts_worker"] + c["ts_frontend"] + c["ts_client"])
    assert f"{m} {ceiling:.2f} (" in md
    # and the end-to-end ceiling of the cores: cores x forward CPU over the whole path's CPU per image
    from bench.serving_report import _e2e_budget, _e2e_of_forward_cores_allow, _served_checks

    rr = results["runtimes"]
    r = rr["models"][m]
    allow = _e2e_of_forward_cores_allow(r, rr["conditions"]["cores"])
    assert allow == pytest.approx(rr["conditions"]["cores"] * _served_checks(r)["e2e_of_forward_cpu"], abs=0.02)
    row = next(line for line in md.splitlines() if line.startswith(f"| {m} | {_e2e_budget(r)['forward_ms']} |"))
    assert row.endswith(f"| {allow} |")


def test_the_committed_torchserve_configuration_report_is_what_its_results_render_to(tmp_path) -> None:
    """docs/results/torchserve_config.md is generated from docs/results/torchserve_config.json, which measured
    every variant
    bench.ts_config defines (the shipped one first)."""
    import json
    from pathlib import Path

    from bench.ts_config import VARIANTS, write_report

    docs = Path(__file__).resolve().parents[2] / "docs" / "results"
    report = json.loads((docs / "torchserve_config.json").read_text())
    assert list(report["variants"]) == list(VARIANTS)
    write_report(report, tmp_path / "torchserve_config.md")
    assert (tmp_path / "torchserve_config.md").read_text() == (docs / "torchserve_config.md").read_text()


def test_ts_overhead_reads_torchserve_counters_and_splits_what_torchserve_adds() -> None:
    import pytest

    from bench.ts_overhead import LATENCY, QUEUE, REQUESTS, breakdown, counter

    # TorchServe 0.12's Prometheus text: label sets end with a comma; another model's line must not match
    labels = 'model_version="default",hostname="vm",}'
    text = (
        "# HELP ts_queue_latency_microseconds Cumulative queue duration in microseconds\n"
        f'ts_queue_latency_microseconds{{model_name="mobilenetv3_lstm_b",{labels} 9.0\n'
        f'ts_queue_latency_microseconds{{model_name="mobilenetv3_lstm",{labels} 248908.131\n'
    )
    assert counter(text, QUEUE, "mobilenetv3_lstm") == 248908.131
    with pytest.raises(KeyError):
        counter(text, LATENCY, "mobilenetv3_lstm")

    # 2 requests: the client waited 14 and 16 ms, the handler took 10 and 11, the frontend counted 13 ms
    # each from arrival to answer, 1.2 ms of it in the queue
    parts = breakdown([14.0, 16.0], [10.0, 11.0], {LATENCY: 26000.0, QUEUE: 2400.0, REQUESTS: 2.0})
    assert parts == {
        "requests": 2,
        "client": 15.0,
        "handler": 10.5,
        "http": 2.0,
        "queue": 1.2,
        "worker_round_trip": 1.3,
        "torchserve_total": 4.5,
    }
    assert parts["http"] + parts["queue"] + parts["worker_round_trip"] == pytest.approx(parts["torchserve_total"])
    with pytest.raises(RuntimeError, match="counted 3"):  # requests that were not ours: no split
        breakdown([14.0, 16.0], [10.0, 11.0], {LATENCY: 26000.0, QUEUE: 2400.0, REQUESTS: 3.0})


def test_the_committed_torchserve_overhead_report_is_what_its_results_render_to() -> None:
    import json
    from pathlib import Path

    from bench.ts_overhead import PARTS, render

    docs = Path(__file__).resolve().parents[2] / "docs" / "results"
    report = json.loads((docs / "ts_overhead.json").read_text())
    assert render(report) == (docs / "ts_overhead.md").read_text()
    for parts in report["models"].values():  # the three parts add up to what TorchServe adds
        assert abs(sum(parts[k] for k in PARTS[:3]) - parts["torchserve_total"]) < 0.02


def test_a_fast_models_level_lasts_at_least_the_minimum_and_a_slow_ones_keeps_its_minimum_requests() -> None:
    from bench.sides import MIN_LEVEL_SECONDS, requests_for

    assert requests_for(8, 1.0, images_per_s=160.0) == math.ceil(160 * MIN_LEVEL_SECONDS)  # mobilenetv3_lstm
    assert requests_for(8, 1.0, images_per_s=8.0) == 64  # xception_bigru: 64 requests already take 8 s
    assert requests_for(32, 0.5, images_per_s=8.0) == 96 and requests_for(1, 1.0) == 24  # 3 per client
    assert requests_for(8, 2.0, images_per_s=160.0) == 2 * requests_for(8, 1.0, images_per_s=160.0)


def test_the_committed_kserve_overhead_report_is_what_its_results_render_to() -> None:
    """docs/results/kserve_overhead.md is generated from docs/results/kserve_overhead.json, which measured every served
    model and the large frames, each side of every pair answered, and the KServe predictor's rows."""
    import json
    from pathlib import Path

    from bench.kserve_overhead import LARGE, SIDES, render
    from core.registry import served_model_names

    docs = Path(__file__).resolve().parents[2] / "docs" / "results"
    report = json.loads((docs / "kserve_overhead.json").read_text())
    assert render(report) == (docs / "kserve_overhead.md").read_text()
    names = served_model_names()
    assert list(report["models"]) == [*names, f"{names[0]}, {LARGE}"]
    assert all(r["kserve_cpu_ms_per_request"] > 0 for r in report["models"].values())
    # the project's KServe predictor: every served model against TorchServe and in-process, and both layouts
    run = report["predictor"]
    assert list(run["models"]) == names
    for r in run["models"].values():
        assert all(r["single"][side]["p50"] > 0 and r["c8"][side]["images_per_s"] > 0 for side in SIDES)
    assert run["layouts"]["models"] == names and set(run["layouts"]["c8"]) == {"all_in_one", "one_per_model"}


def test_the_gate_side_benchmark_loads_the_served_statistics_at_another_side(shared_dir: Path) -> None:
    """bench.gate_side's copy of served_model/gate_statistics.py at the served side computes the served statistics bit
    for bit; at another side the same statistics on a smaller copy of the image."""
    import numpy as np
    from PIL import Image

    from bench.gate_side import load_at_side
    from served_model import gate_statistics

    frames = sorted((shared_dir / "data" / "all4" / "original").glob("*/*.jpg"))[::400]
    images = [Image.open(p).convert("RGB") for p in frames]
    served, at_64 = (
        load_at_side(gate_statistics.STATISTICS_SIDE, "_gate_side_test_served"),
        load_at_side(64, "_gate_side_test_64"),
    )
    assert at_64.STATISTICS_SIDE == 64 and served.STATISTICS_SIDE == gate_statistics.STATISTICS_SIDE
    ref = gate_statistics._hue_sat_hist(gate_statistics._prepare(images[0]))
    for im in images:
        expected = gate_statistics.image_statistics(im, ref)
        assert np.array_equal(served.image_statistics(im, ref), expected)
        small = at_64.image_statistics(im, ref)
        assert small.shape == expected.shape and np.isfinite(small).all() and not np.allclose(small, expected)
    assert at_64._prepare_image(images[0]).size == (64, 64)


def test_the_committed_gate_side_report_is_what_its_results_render_to() -> None:
    """docs/results/gate_side.md is generated from docs/results/gate_side.json, which holds the served side and the same
    test sets at every side."""
    import json

    from bench.gate_side import render
    from served_model.gate_statistics import STATISTICS_SIDE

    docs = Path(__file__).resolve().parents[2] / "docs" / "results"
    report = json.loads((docs / "gate_side.json").read_text())
    assert render(report) == (docs / "gate_side.md").read_text()
    assert STATISTICS_SIDE in report["sides"] and len(report["sides"]) > 1
    names = [list(fit["rates"]) for fit in report["fits"].values()]
    assert all(n == names[0] for n in names) and "unseen_source_bccd_val" in names[0]
