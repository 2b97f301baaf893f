"""docs/results/scale.md (and scale_repeat.md), its plot, rendered from the record (bench.scale writes it;
``python -m bench.scale --report-only`` renders it again)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.harness import fill
from bench.layout import LAYOUT, PROCESS_TYPES

__all__ = ["plot", "render", "write_report"]


#: how every configuration was run and measured; the services and commands are bench.layout's
METHOD = (
    "Each configuration starts, as separate local processes, what docker/compose.yaml runs as separate "
    "containers: a private MariaDB, `$migrate`, TorchServe with $models "
    "(docker/torchserve/config.properties, workers per model overridden, 1 torch thread each), N web "
    "instances (`$web`, $web_processes_per_instance gunicorn process(es) x 4 threads each, "
    "`portal.config.settings_production`), N job clusters (`$worker`, $job_workers_per_cluster job worker "
    "processes each) and nginx with docker/nginx.conf rendered for this machine (TLS with a throw-away "
    "certificate, an upstream of the N web ports). Load: $clients concurrent API clients, each sending "
    "$requests_per_client uploads of $images_per_request real smear frames with `model=$model` through "
    "the proxy, pausing $think_s s between uploads (bench.stack.upload_load, as `make loadtest`); the "
    "cell model off. One warm-up upload per configuration is not counted. Throughput: accepted images "
    "(and analyses: one per image and model) divided by the time from the first upload to the last "
    "analysis final. Upload-to-result: an analysis's `completed_at - created_at`. CPU: user + system "
    "seconds of each process over that window (psutil); *cores* = CPU seconds / window. Memory: peak RSS "
    "per process (shared pages counted in each) and the peak PSS summed over the processes of a type "
    "(shared pages split), sampled every 2 s."
)


def _manage(command: Sequence[str]) -> str:
    """``manage.py <what>`` of a layout command (``python portal/manage.py <what> ...``)."""
    return f"manage.py {command[2]}"


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _per_kind_rows(kinds: Sequence[str], runs: Sequence[dict[str, Any]], cell: Callable[..., str]) -> list[str]:
    """One table row per process type: ``cell(run, process_stats)`` per run, "-" where the run had none."""
    return [
        f"| {k} | " + " | ".join("-" if (p := r["processes"].get(k)) is None else cell(r, p) for r in runs) + " |"
        for k in kinds
    ]


def _ms_per_image(run: dict[str, Any], p: dict[str, Any]) -> float:
    """CPU ms per uploaded image of one process type (from its ms per analysis)."""
    return float(p["cpu_ms_per_analysis"] or 0) * run["analyses_accepted"] / max(1, run["images_accepted"])


def _others(run: dict[str, Any]) -> str:
    named = run["machine"].get("outside_busiest", [])
    cores = run["machine"]["outside_stack_cores"]
    return f"{cores} cores; " + (", ".join(f"`{o['cmd'][:60]}` {o['cores']}" for o in named) or "not named")


def _command_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for command in dict.fromkeys(r["command"] for r in runs):
        mine = [r for r in runs if r["command"] == command]
        lines.append(f"- {'; '.join(r['label'] for r in mine)} ({mine[0]['date']}): `{command}`")
    return lines


def write_report(runs: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    """``out`` (Markdown), its ``.json`` (the record: ``meta`` and ``runs``) and its ``.png``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    plot(runs, out.with_suffix(".png"))
    out.write_text(render(runs, meta, out.with_suffix(".png").name))


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"].replace(", ", "\n") for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    x = range(len(runs))
    axes[0].bar([i - 0.2 for i in x], [r["images_per_s"] or 0 for r in runs], 0.4, label="images/s")
    axes[0].bar([i + 0.2 for i in x], [r["analyses_per_s"] or 0 for r in runs], 0.4, label="analyses/s")
    axes[0].set_xticks(list(x), labels, fontsize=8)
    axes[0].set_title("throughput (first upload to last result)")
    axes[0].legend(fontsize=8)
    axes[1].boxplot([r["latencies_s"] or [0] for r in runs], tick_labels=labels)
    axes[1].set_title("upload latency through nginx (s)")
    axes[2].boxplot([r["result_latencies_s"] or [0] for r in runs], tick_labels=labels)
    axes[2].set_title("upload-to-result latency (s)")
    for ax in axes[1:]:
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(runs: list[dict[str, Any]], meta: dict[str, Any], plot_name: str) -> str:
    """The page from the record alone; the services and their commands from :data:`bench.layout.LAYOUT`."""
    r0 = runs[0]
    lines = [
        "# Scale on one machine: 1 vs 2 of each process",
        "",
        f"Generated by bench/scale.py (`make scale-bench`); machine: {meta['machine']}, {meta['memory_gb']} GB; "
        f"CPU: {meta['cpu']}; 1-minute load average before each run: "
        + ", ".join(f"{r['label']}: {r['loadavg_before']}" for r in runs)
        + ". Every row was measured by the command given for it (`--merge` reruns replace only their rows):",
        "",
        *_command_lines(runs),
        "",
        fill(
            METHOD,
            {
                **r0,
                "migrate": _manage(LAYOUT["migrate"].command),
                "web": shlex.join(LAYOUT["web"].command),
                "worker": _manage(LAYOUT["worker"].command),
                "models": ", ".join(r0["models"]),
            },
        ),
        "",
        "| configuration | uploads accepted | errors | analyses done / not final | images/s | analyses/s "
        "| upload p50 / p95 (s) | upload-to-result p50 / p95 (s) | TorchServe call p50 (ms) | window (s) "
        "| CPU used by the stack (cores of 2) | CPU used by other processes (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
        cores = sum(p["cores"] or 0 for p in r["processes"].values())
        lines.append(
            f"| {r['label']} | {r['uploads_accepted']}/{r['uploads']} | {errors} | "
            f"{r['analyses'].get('done', 0)} / {r['not_final']} of {r['analyses_accepted']} | {r['images_per_s']} | "
            f"{r['analyses_per_s']} | {r['upload_p50_s']} / {r['upload_p95_s']} | {r['result_p50_s']} / "
            f"{r['result_p95_s']} | {r['torchserve_call_p50_ms']} | {r['window_s']} | {cores:.2f} | "
            f"{r['machine']['outside_stack_cores']:.2f} |"
        )
    kinds = [k for k in PROCESS_TYPES if any(k in r["processes"] for r in runs)]
    kinds += sorted({k for r in runs for k in r["processes"]} - set(kinds))
    head = " | ".join(r["label"] for r in runs)
    busy = [r for r in runs if r["machine"]["outside_stack_cores"] > 0.05]
    if busy:
        lines += [
            "",
            "Other processes were running during: "
            + "; ".join(f"{r['label']} ({_others(r)})" for r in busy)
            + ". Their CPU was not available to the stack: those rows understate what the configuration can do.",
        ]
    lines += [
        "",
        f"![throughput and latency]({plot_name})",
        "",
        "## CPU per process type",
        "",
        "Cores used over the window, and CPU milliseconds per uploaded image (the processes of that type "
        "together; an image is one analysis for each model, so a model worker's figure is its cost per "
        "analysis). *Stack* leaves out the load clients; its images/s per core is 1000 / its ms per image.",
        "",
        f"| process type | {head} |",
        "|---|" + "---|" * len(runs),
    ]
    lines += _per_kind_rows(
        kinds, runs, lambda r, p: f"{p['processes']} proc: {p['cores']} cores, {_ms_per_image(r, p):.0f} ms"
    )
    cells = []
    for r in runs:
        stack = [p for k, p in r["processes"].items() if not k.startswith("load clients")]
        ms = sum(_ms_per_image(r, p) for p in stack)
        cells.append(
            f"{sum(p['cores'] or 0 for p in stack):.2f} cores, {ms:.0f} ms ({1000 / ms:.2f} images/s per core)"
        )
    lines.append("| **stack** | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Memory per process type",
        "",
        "Peak RSS of one process (mean over the processes of the type), and the peak PSS of all of them together.",
        "",
        f"| process type | {head} |",
        "|---|" + "---|" * len(runs),
    ]
    lines += _per_kind_rows(
        kinds,
        runs,
        lambda r, p: f"{p['processes']} x {_mb(p['rss_mb_per_process'])} MB RSS; PSS {_mb(p['pss_mb_total'])} MB",
    )
    cells = []
    for r in runs:
        pss = sum(p["pss_mb_total"] for k, p in r["processes"].items() if not k.startswith("load clients"))
        cells.append(f"PSS {pss / 1024:.2f} GB")
    lines.append("| **stack** | " + " | ".join(cells) + " |")
    if len(runs) > 1 and runs[0]["images_per_s"] and runs[-1]["images_per_s"]:
        a, b = runs[0], runs[-1]
        lines += [
            "",
            f"{b['label']} vs {a['label']}: throughput x{b['images_per_s'] / a['images_per_s']:.2f}, "
            f"upload-to-result p50 x{(b['result_p50_s'] or 0) / (a['result_p50_s'] or 1):.2f}, "
            f"upload p95 x{(b['upload_p95_s'] or 0) / (a['upload_p95_s'] or 1):.2f}. "
            "What this means for sizing: docs/guides/deployment.md, Capacity planning.",
        ]
    lines.append("")
    return "\n".join(lines)
