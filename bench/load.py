"""Load and fault benchmark of the upload -> stored -> inferred -> result path (`make loadtest`).

For each scenario: a fresh portal stack as `make run` starts it (bench.stack.PortalStack: gunicorn +
the job cluster, supervised) on SQLite or MySQL, against one TorchServe with the four models started
here; N concurrent API clients upload real smear frames with ``model=all``; optionally one fault in
the middle of the run (a job worker SIGKILLed mid-job, TorchServe stopped for a while, the private
MariaDB restarted). Recorded per scenario: uploads accepted, client errors by HTTP status and code,
analyses done / rejected / failed / lost / stuck, time until all are final (from the first upload and
from the end of the fault), p50/p95 upload latency, 5xx answers, supervisor restarts, "database is
locked" lines. Writes docs/results/reliability.md, .json and _latency.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import RESULTS, machine, percentile
from bench.harness import write_report as write_report_files
from bench.stack import MariaDB, PortalStack, UploadResult, storage_report, upload_load, wait_until
from core.host import cpu_model
from core.paths import ALL4_ORIGINAL

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ("clean", "worker_kill", "torchserve_restart", "mariadb_restart")


def _log(msg: str) -> None:
    print(f"[loadtest {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _running_worker_pid(stack: PortalStack) -> int | None:
    """The pid of a job worker that is running a job now (from its analysis lease), SQLite or MySQL."""
    url = stack.database_url
    sql = "SELECT claimed_by FROM analyses_analysis WHERE status = 'pending' AND stage = 'running' LIMIT 1"
    if url.startswith("sqlite"):
        with sqlite3.connect(url[len("sqlite:///") :], timeout=10) as conn:
            row = conn.execute(sql).fetchone()
    else:
        from urllib.parse import urlparse

        import MySQLdb  # type: ignore[import-untyped]

        u = urlparse(url)
        conn = MySQLdb.connect(host=u.hostname, port=u.port or 3306, user=u.username or "root", db=u.path.lstrip("/"))
        try:
            cur = conn.cursor()
            cur.execute(sql)
            row = cur.fetchone()
        finally:
            conn.close()
    return int(str(row[0]).rsplit(":", 1)[1]) if row and row[0] else None


def run_scenario(
    name: str,
    database: str,
    ts: Any,
    ts_restart: Callable[[], Any],
    ts_stop: Callable[[], None],
    work: Path,
    frames: list[Path],
    clients: int,
    requests_per_client: int,
    images: int,
    fault_after_s: float,
    outage_s: float,
    think_s: float,
) -> dict[str, Any]:
    mariadb: MariaDB | None = None
    if database == "mysql":
        mariadb = MariaDB(work / f"{name}-mariadb")
        mariadb.start()
        mariadb.execute("CREATE DATABASE portal")
        url = f"{mariadb.url_root}/portal"
    else:
        url = f"sqlite:///{work / name}-portal.sqlite3"
    stack = PortalStack(
        var_dir=work / f"{name}-{database}",
        database_url=url,
        torchserve_url=ts.inference_url,
        torchserve_workdir=ts.workdir,
    )
    stack.start()
    fault: dict[str, Any] = {"kind": name}
    recovered_at: list[float] = []

    def inject() -> None:
        time.sleep(fault_after_s)
        if name == "worker_kill":
            pid = None
            deadline = time.monotonic() + 30
            while pid is None and time.monotonic() < deadline:
                pid = _running_worker_pid(stack)
                time.sleep(0.02)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                fault["killed_pid"] = pid
            recovered_at.append(time.monotonic())
        elif name == "torchserve_restart":
            ts_stop()
            time.sleep(outage_s)
            t0 = time.monotonic()
            ts_restart()
            fault["torchserve_restart_s"] = round(time.monotonic() - t0, 1)
            recovered_at.append(time.monotonic())
        elif name == "mariadb_restart" and mariadb is not None:
            mariadb.stop()
            time.sleep(outage_s)
            mariadb.start()
            recovered_at.append(time.monotonic())

    injector = threading.Thread(target=inject, daemon=True) if name != "clean" else None
    t_start = time.monotonic()
    if injector:
        injector.start()
    _log(f"{name}/{database}: {clients} clients x {requests_per_client} requests x {images} images, model=all")
    results: list[UploadResult] = upload_load(stack, frames, clients, requests_per_client, images, think_s=think_s)
    t_uploaded = time.monotonic()
    if injector:
        injector.join()
    accepted = {a for r in results if r.status == 201 for a in r.analyses}
    final_at = None
    try:
        wait_until(
            lambda: storage_report(stack)["analyses"].get("pending", 0) == 0, 1800, 2.0, f"{name}: all analyses final"
        )
        final_at = time.monotonic()
    except TimeoutError as exc:
        _log(str(exc))
    before_sweep = storage_report(stack)
    report = storage_report(stack, sweep=True)  # the portal's own sweep, as it runs every minute
    log = stack.log_text()
    state = stack.state()
    alive = stack.proc is not None and stack.proc.poll() is None
    stack.stop()
    if mariadb is not None:
        mariadb.stop()
    rows = sum(report["analyses"].values())
    latencies = [r.latency_s for r in results if r.status == 201]
    out = {
        "scenario": name,
        "database": database,
        "clients": clients,
        "think_s": think_s,
        "requests_per_client": requests_per_client,
        "images_per_request": images,
        "uploads": len(results),
        "uploads_accepted": sum(r.status == 201 for r in results),
        "client_errors": dict(Counter(f"{r.status} {r.code}".strip() for r in results if r.status != 201)),
        "server_errors_5xx": sum(r.status >= 500 for r in results),
        "connection_failures": sum(r.status == 0 for r in results),
        "analyses_accepted": len(accepted),
        "analyses": report["analyses"],
        "lost": max(0, len(accepted) - rows),
        "stuck": report["analyses"].get("pending", 0),
        "done_without_heatmap": report["done_without_heatmap"],
        "files_rows_consistent": report["consistent"],
        "rows_without_file": len(report["rows_without_file"]),
        "orphan_files_swept": len(before_sweep["files_without_row"]),
        "upload_wall_s": round(t_uploaded - t_start, 1),
        "all_final_s": round(final_at - t_start, 1) if final_at else None,
        "final_after_recovery_s": round(final_at - recovered_at[0], 1) if final_at and recovered_at else None,
        "upload_p50_s": percentile(latencies, 0.5, 3),
        "upload_p95_s": percentile(latencies, 0.95, 3),
        "analyses_per_s": round(len(accepted) / (final_at - t_start), 2) if final_at else None,
        "supervisor_alive": alive,
        "child_restarts": {k: v["restarts"] for k, v in state["children"].items()},
        "database_locked_lines": log.count("database is locked"),
        "tracebacks": log.count("Traceback"),
        "fault": fault,
        "latencies_s": [round(v, 4) for v in latencies],
    }
    _log(
        f"{name}/{database}: accepted {out['uploads_accepted']}/{out['uploads']}, analyses {out['analyses']}, "
        f"lost {out['lost']}, stuck {out['stuck']}, all final {out['all_final_s']} s"
    )
    return out


def write_report(runs: list[dict[str, Any]], out: Path) -> None:
    """``out`` (Markdown), its ``.json`` (the record: ``meta`` and ``runs``) and ``<stem>_latency.png``."""
    record = {"meta": {"machine": machine(), "cpu": cpu_model()}, "runs": runs}
    write_report_files(out, record, render(record))
    plot(runs, out.with_name(out.stem + "_latency.png"))


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4))
    labels = [f"{r['scenario']}\n{r['database']}" for r in runs]
    ax.boxplot([r["latencies_s"] or [0] for r in runs], tick_labels=labels, showfliers=True)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_ylabel("upload latency (s)")
    ax.set_title("API upload latency per scenario (2 frames x 4 models per request)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def render(record: dict[str, Any]) -> str:
    """docs/results/reliability.md from its record alone."""
    meta, runs = record["meta"], record["runs"]
    lines = [
        "# Reliability: uploads under load and faults",
        "",
        f"Generated by bench/load.py (`make loadtest`); machine: {meta['machine']}; CPU: {meta['cpu']}. Every "
        "number below was measured by the command given for its row (`--merge` reruns replace only their rows):",
        "",
        *[f"- `{c}`" for c in dict.fromkeys(r["command"] for r in runs)],
        "",
        "Each scenario starts a fresh portal as `make run` does (gunicorn with 2 processes x 4 threads, the "
        "django-q2 job cluster with 4 workers, supervised by portal/run.py) against one TorchServe with the "
        "four models (1 worker each, 1 thread), and uploads real smear frames through the API with "
        "`model=all` from concurrent clients (each pausing between its uploads); a fault, if any, is injected "
        "once in the middle of the run. "
        "*Lost*: accepted analyses with no row; *stuck*: still pending when the benchmark gave up (30 min).",
        "",
        "| scenario | database | uploads accepted | client errors | analyses (done/rejected/failed) | lost | stuck "
        "| 5xx | all final (s) | final after recovery (s) | analyses/s | upload p50 / p95 (s) | restarts | "
        "'database is locked' | files = rows (orphans swept) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        a = r["analyses"]
        errors = ", ".join(f"{k}: {v}" for k, v in r["client_errors"].items()) or "0"
        restarts = sum(r["child_restarts"].values())
        lines.append(
            f"| {r['scenario']} | {r['database']} | {r['uploads_accepted']}/{r['uploads']} | {errors} | "
            f"{a.get('done', 0)}/{a.get('rejected', 0)}/{a.get('failed', 0)} of {r['analyses_accepted']} | "
            f"{r['lost']} | {r['stuck']} | {r['server_errors_5xx']} | {r['all_final_s']} | "
            f"{r['final_after_recovery_s'] if r['final_after_recovery_s'] is not None else '-'} | "
            f"{r['analyses_per_s']} | {r['upload_p50_s']} / {r['upload_p95_s']} | {restarts} | "
            f"{r['database_locked_lines']} | {'yes' if r['files_rows_consistent'] else 'NO'} "
            f"({r['orphan_files_swept'] if r['orphan_files_swept'] is not None else '-'}) |"
        )
    lines += [
        "",
        "![upload latency](reliability_latency.png)",
        "",
        "Faults: "
        + "; ".join(f"{r['scenario']}/{r['database']}: {r['fault']}" for r in runs if r["fault"] != {"kind": "clean"}),
        "",
        "During a database outage, uploads are answered 503 `database_unavailable` with Retry-After (nothing was "
        "stored; the client sends again); the error codes above are those answers. 'final after recovery' is "
        "measured from the moment the faulty service was back (or, for a killed worker, from the kill) and "
        "includes the backlog that built up meanwhile.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-store", type=Path, default=REPO / "model_store")
    ap.add_argument("--databases", nargs="+", default=["sqlite", "mysql"], choices=["sqlite", "mysql"])
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument(
        "--fault-clients", type=int, default=None, help="clients for the fault scenarios (default --clients)"
    )
    ap.add_argument("--fault-requests", type=int, default=None)
    ap.add_argument("--fault-after", type=float, default=15.0)
    ap.add_argument("--outage", type=float, default=20.0)
    ap.add_argument("--think", type=float, default=1.0, help="seconds each client pauses between uploads")
    ap.add_argument("--out", type=Path, default=RESULTS / "reliability.md")
    ap.add_argument("--merge", action="store_true", help="keep the other scenarios' rows of an earlier run")
    args = ap.parse_args(argv)

    from serving.torchserve import free_ports, start, stop

    frames = sorted(ALL4_ORIGINAL.rglob("*.jpg"))
    if not frames:
        raise SystemExit(f"no frames under {ALL4_ORIGINAL} (set LEUKEMIA_SHARED)")
    work = Path(tempfile.mkdtemp(prefix="loadtest-"))
    ports = free_ports()
    holder: dict[str, Any] = {}

    def ts_start() -> Any:
        holder["ts"] = start(args.model_store, workdir=work / "ts", ports=ports, torch_threads=1)
        return holder["ts"]

    def ts_stop() -> None:
        stop(info=holder["ts"])

    _log("starting TorchServe with the four models ...")
    ts = ts_start()
    runs = []
    try:
        for database in args.databases:
            for scenario in args.scenarios:
                if scenario == "mariadb_restart" and database != "mysql":
                    continue
                fault = scenario != "clean"
                runs.append(
                    run_scenario(
                        scenario,
                        database,
                        ts,
                        ts_start,
                        ts_stop,
                        work,
                        frames,
                        (args.fault_clients or args.clients) if fault else args.clients,
                        (args.fault_requests or args.requests) if fault else args.requests,
                        args.images,
                        args.fault_after,
                        args.outage,
                        args.think,
                    )
                )
    finally:
        ts_stop()
    command = "python -m bench.load " + shlex.join(sys.argv[1:] if argv is None else argv)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for run in runs:
        run.update(command=command, date=stamp)
    if args.merge and args.out.with_suffix(".json").exists():
        earlier = json.loads(args.out.with_suffix(".json").read_text())["runs"]
        fresh = {(r["scenario"], r["database"]) for r in runs}
        runs = [r for r in earlier if (r["scenario"], r["database"]) not in fresh] + runs
        order = {(s, d): i for i, (d, s) in enumerate((d, s) for d in ("sqlite", "mysql") for s in SCENARIOS)}
        runs.sort(key=lambda r: order[(r["scenario"], r["database"])])
    write_report(runs, args.out)
    _log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
