"""Upload-to-result time through the portal, one frame at a time on an otherwise idle machine
(`make bench-portal`).

The stack is the real one, as `make run` starts it: TorchServe with the five archives (the four frame
classifiers and the cell model, one worker each), the portal (gunicorn + the job cluster,
bench.stack.PortalStack) on its own SQLite file. One client uploads one real smear frame through the
API, then waits until every job of that image is final; the clock runs from just before the upload
request to the moment the last job's row says final (read from the portal's database every 10 ms, so the
reading adds at most that). Scenarios, each after two warm-up uploads:

- ``all+cells``: the four frame models (prediction and Grad-CAM heatmap in one ``/explanations`` call
  each) and the cell model with its annotated image: what a technologist waits for;
- one scenario per frame model alone (``model=<name>``, cells off): the portal column of the runtimes
  table (``bench.runtimes --portal-json``).

Also recorded per job: time queued (row created -> TorchServe called) and TorchServe's round trip as the
portal measured it, so the table says where the time goes. Writes docs/results/portal_latency.json, .md and a
PNG of the distributions.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import RESULTS, percentile
from bench.harness import write_report as write_report_files
from bench.stack import PortalStack
from core.host import cpu_model
from core.paths import ALL4_ORIGINAL
from core.registry import model_names

REPO = Path(__file__).resolve().parent.parent
ALL = "all+cells"


def _log(msg: str) -> None:
    print(f"[portal-latency {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _parse(ts: str | None) -> float | None:
    """Django's SQLite timestamps are UTC, written without an offset."""
    if ts is None:
        return None
    value = datetime.fromisoformat(ts)
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


class Rows:
    """Read-only view of the stack's SQLite database: the jobs of one image."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)

    def jobs(self, image_id: int) -> list[dict[str, Any]]:
        out = []
        for table, kind in (("analyses_analysis", "frame"), ("analyses_cellanalysis", "cells")):
            cur = self.db.execute(
                f"SELECT model_name, status, created_at, completed_at, latency_ms FROM {table} WHERE image_id = ?",  # noqa: S608
                (image_id,),
            )
            for name, status, created, completed, latency in cur.fetchall():
                out.append(
                    {
                        "kind": kind,
                        "model": name,
                        "status": status,
                        "created": _parse(created),
                        "completed": _parse(completed),
                        "latency_ms": latency,
                    }
                )
        return out


def one_upload(stack: PortalStack, rows: Rows, frame: Path, model: str, timeout_s: float = 60) -> dict[str, Any]:
    t0 = time.time()
    with frame.open("rb") as f:
        r = stack.api(
            "post",
            "/api/analyses/",
            data={"specimen": stack.specimen_id, "model": model},
            files={"images": (frame.name, f, "image/jpeg")},
        )
    r.raise_for_status()
    t_upload = time.time() - t0
    image_id = int(r.json()[0]["id"])
    deadline = t0 + timeout_s
    while True:
        jobs = rows.jobs(image_id)
        if jobs and all(j["status"] != "pending" for j in jobs):
            break
        if time.time() > deadline:
            raise TimeoutError(f"image {image_id}: jobs not final after {timeout_s} s: {jobs}")
        time.sleep(0.01)
    t_done = time.time() - t0
    return {
        "image": image_id,
        "upload_ms": 1000 * t_upload,
        "result_ms": 1000 * t_done,
        "statuses": sorted({j["status"] for j in jobs}),
        "jobs": [
            {
                "kind": j["kind"],
                "model": j["model"],
                "status": j["status"],
                "latency_ms": j["latency_ms"],
                "total_ms": None if j["completed"] is None else 1000 * (j["completed"] - t0),
                "queued_ms": None
                if j["completed"] is None or j["latency_ms"] is None or j["created"] is None
                else 1000 * (j["completed"] - j["created"]) - j["latency_ms"],
            }
            for j in jobs
        ],
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    result = [r["result_ms"] for r in runs]
    per_job: dict[str, dict[str, float]] = {}
    for name in sorted({j["model"] for r in runs for j in r["jobs"]}):
        jobs = [j for r in runs for j in r["jobs"] if j["model"] == name and j["latency_ms"] is not None]
        per_job[name] = {
            "torchserve_p50_ms": statistics.median(j["latency_ms"] for j in jobs),
            "queued_p50_ms": statistics.median(j["queued_ms"] for j in jobs),
            "done_p50_ms": statistics.median(j["total_ms"] for j in jobs),
        }
    return {
        "n": len(runs),
        "result_p50_ms": statistics.median(result),
        "result_p95_ms": percentile(result, 0.95),
        "result_min_ms": min(result),
        "upload_p50_ms": statistics.median(r["upload_ms"] for r in runs),
        "all_done": all(r["statuses"] == ["done"] for r in runs),
        "per_job": per_job,
    }


def write_report(report: dict[str, Any], out: Path) -> None:
    """``out`` (Markdown), its ``.json`` (the record) and ``.png``."""
    write_report_files(out, report, render(report))
    plot(report, out.with_suffix(".png"))


def render(report: dict[str, Any]) -> str:
    """docs/results/portal_latency.md from its record alone."""
    lines = [
        "# Portal upload-to-result time",
        "",
        f"Measured {report['when']} on {report['cpu']} ({report['cores']} cores) with nothing else running (1-minute "
        f"load average {report['load_before']:.2f} before the run, which counts a benchmark step just finished), "
        f"with `{report['command']}`.",
        "",
        "One frame per upload, one upload at a time, after two warm-up uploads; the clock runs from the "
        "upload request to the last job of the image being final. TorchServe one worker per model, portal "
        f"{report['portal_workers']} job workers, SQLite.",
        "",
        "| scenario | uploads | p50 ms | p95 ms | min ms | upload answer p50 ms | all done |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in report["scenarios"].items():
        lines.append(
            f"| {name} | {s['n']} | {s['result_p50_ms']:.0f} | {s['result_p95_ms']:.0f} | {s['result_min_ms']:.0f} | "
            f"{s['upload_p50_ms']:.0f} | {'yes' if s['all_done'] else 'no'} |"
        )
    lines += [
        "",
        f"Where the time goes in `{ALL}` (medians per job: time from the upload's start until the job is final; "
        "of it, TorchServe's round trip as the portal measured it, and the rest queued or in the job worker):",
        "",
        "| job | done after ms | TorchServe ms | queued + worker ms |",
        "|---|---|---|---|",
    ]
    for name, j in report["scenarios"][ALL]["per_job"].items():
        lines.append(f"| {name} | {j['done_p50_ms']:.0f} | {j['torchserve_p50_ms']:.0f} | {j['queued_p50_ms']:.0f} |")
    target = report["scenarios"][ALL]["result_p50_ms"]
    lines += [
        "",
        f"Target (issue: p50 <= 1000 ms for one frame with all four models plus cells): **{target:.0f} ms, "
        f"{'met' if target <= 1000 else 'not met'}**.",
        "",
        "![distribution](portal_latency.png)",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(report["scenarios"])
    ax.boxplot(
        [[r["result_ms"] for r in report["runs"][n]] for n in names], tick_labels=names, orientation="horizontal"
    )
    ax.axvline(1000, color="red", linestyle="--", linewidth=1, label="target (all+cells)")
    ax.set_xlabel("upload to result, ms")
    ax.set_title("Portal upload-to-result, one frame at a time")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-store", type=Path, default=REPO / "model_store")
    ap.add_argument("--uploads", type=int, default=20, help="measured uploads per scenario")
    ap.add_argument("--portal-workers", type=int, default=4)
    ap.add_argument("--out", type=Path, default=RESULTS / "portal_latency.md")
    ap.add_argument("--portal-json", type=Path, default=None, help="also write {model: p50 ms} for bench.runtimes")
    args = ap.parse_args(argv)

    import os

    from serving.torchserve import free_ports, start, stop

    frames = sorted(ALL4_ORIGINAL.rglob("*.jpg"))
    if not frames:
        raise SystemExit(f"no frames under {ALL4_ORIGINAL} (set LEUKEMIA_SHARED)")
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="portal-latency-"))
    _log("starting TorchServe with every archive ...")
    ts = start(args.model_store, workdir=work / "ts", ports=free_ports(), torch_threads=1)
    stack = PortalStack(
        var_dir=work / "portal",
        database_url=f"sqlite:///{work / 'portal.sqlite3'}",
        torchserve_url=ts.inference_url,
        torchserve_workdir=str(ts.workdir),
        cell_model="wbc_cells",
        workers=args.portal_workers,
    )
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        stack.start()
        rows = Rows(work / "portal.sqlite3")
        scenarios = [(ALL, "all")] + [(m, m) for m in model_names()]
        for name, model in scenarios:
            if name != ALL:  # the frame models alone: the cell model's job is not waited for
                stack.stop()
                stack.cell_model = ""
                stack.start()
            for i in range(2):
                one_upload(stack, rows, frames[i], model)
            runs[name] = []
            for i in range(args.uploads):
                run = one_upload(stack, rows, frames[(7 * i + 3) % len(frames)], model)
                runs[name].append(run)
                _log(f"{name} {i + 1}/{args.uploads}: {run['result_ms']:.0f} ms")
    finally:
        stack.stop()
        stop(info=ts)
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_before": load_before,
        "portal_workers": args.portal_workers,
        "command": "make bench-portal",
        "scenarios": {name: summarise(r) for name, r in runs.items()},
        "runs": runs,
    }
    write_report(report, args.out)
    if args.portal_json:
        args.portal_json.write_text(
            json.dumps({m: round(report["scenarios"][m]["result_p50_ms"], 1) for m in model_names()}) + "\n"
        )
    _log(f"wrote {args.out} ({ALL}: p50 {report['scenarios'][ALL]['result_p50_ms']:.0f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
