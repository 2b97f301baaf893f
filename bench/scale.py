"""Scale on one machine (`make scale-bench`): the containers' entry points, 1 vs 2 of each, behind nginx.

For each configuration (web instances, job clusters, TorchServe workers per model) this starts, as
separate processes, what docker/compose.yaml runs as separate containers:

- one private MariaDB (bench.stack.MariaDB) and ``manage.py migrate`` once (the ``migrate`` service);
- TorchServe with the four frame models (serving.torchserve, the TorchServe image's command), its
  configuration docker/torchserve/config.properties with the worker count per model overridden;
- N ``gunicorn --config portal/gunicorn.conf.py portal.config.wsgi:application`` (the ``web``
  service), each on its own port, with ``portal.config.settings_production``;
- N ``manage.py qcluster`` (the ``worker`` service);
- nginx (Debian's package) with docker/nginx.conf rendered for this machine: TLS with a throw-away
  self-signed certificate, the portal's ``proxy_pass`` pointing at an upstream of the N web ports,
  and the inference server pointing at this TorchServe.

Then the load benchmark's clients (bench.stack.upload_load) upload real smear frames through the
proxy with ``model=all`` (the cell model off, as in bench/load.py), and this records throughput
(images/s, analyses/s from the first upload until the last analysis is final), p50/p95 of the upload
and of upload-to-result (an analysis's ``completed_at - created_at``), errors, CPU seconds per
process and peak memory (RSS and PSS) per process type, sampled with psutil. Writes docs/results/scale.md,
.json and .png (bench.scale_report). The services and their commands are bench.layout's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from bench.harness import RESULTS, command_line, machine, percentile
from bench.layout import LAYOUT, Config, ScaleStack, render_nginx_config, render_torchserve_config, start_torchserve
from bench.monitor import ProcessMonitor, model_worker_pids
from bench.scale_report import write_report
from bench.stack import MariaDB, UploadResult, storage_report, upload_load, wait_until
from core.host import cpu_model
from core.paths import ALL4_ORIGINAL
from core.registry import model_names

REPO = Path(__file__).resolve().parent.parent

# the configuration renderers are bench.layout's; tests and bench.ts_config import them from here too
__all__ = ["Config", "main", "render_nginx_config", "render_torchserve_config", "run_config"]


def _log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- one run ---------------------------------------------------------------------------------------


def _db_rows(mariadb: MariaDB, database: str, sql: str) -> list[list[str]]:
    out = subprocess.run(
        ["mariadb", "-h", "127.0.0.1", "-P", str(mariadb.port), "-u", "root", "-N", "-B", database, "-e", sql],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def _storage_report(stack: ScaleStack) -> dict[str, Any]:
    """bench.stack.storage_report, twice if its answer is not JSON (the second failure's stderr kept)."""
    try:
        return storage_report(stack)
    except ValueError:
        proc = stack.manage("check_storage", "--json")
        _log(f"check_storage answered {proc.returncode} without JSON; again: {proc.stderr[-1500:]}")
        try:
            return dict(json.loads(proc.stdout))
        except ValueError:
            return {"consistent": None, "error": proc.stderr[-1500:]}


def run_config(
    config: Config,
    work: Path,
    model_store: Path,
    frames: list[Path],
    clients: int,
    requests_per_client: int,
    images: int,
    think_s: float,
    models: list[str],
    job_workers: int,
    web_processes: int,
) -> dict[str, Any]:
    from serving.torchserve import stop as ts_stop

    tag = f"w{config.web}-j{config.jobs}-t{config.ts_workers}"
    _log(f"{config.label}: starting MariaDB, TorchServe ({len(models)} models x {config.ts_workers} workers) ...")
    mariadb = MariaDB(work / f"{tag}-mariadb")
    mariadb.start()
    mariadb.execute("CREATE DATABASE portal CHARACTER SET utf8mb4")
    ts = start_torchserve(model_store, work / f"{tag}-ts", config.ts_workers, models)
    stack = ScaleStack(
        var_dir=work / f"{tag}-portal",
        database_url=f"{mariadb.url_root}/portal",
        torchserve_url=ts.inference_url,
        torchserve_workdir=ts.workdir,
        models=models,
        workers=job_workers,
        web_instances=config.web,
        job_clusters=config.jobs,
        web_processes=web_processes,
    )
    try:
        t = time.monotonic()
        stack.start()
        _log(f"{config.label}: portal up behind nginx in {time.monotonic() - t:.0f} s; warm-up upload ...")
        model = "all" if set(models) == set(model_names()) else models[0]
        warm = upload_load(stack, frames[-2:], 1, 1, 2, model=model)
        warm_ids = {a for r in warm for a in r.analyses}
        wait_until(
            lambda: (
                _db_rows(mariadb, "portal", "SELECT COUNT(*) FROM analyses_analysis WHERE status='pending'")[0][0]
                == "0"
            ),
            300,
            1.0,
            "warm-up analyses final",
        )
        fixed = {pid: f"model worker: {m}" for pid, m in model_worker_pids(ts).items()}
        fixed[mariadb.proc.pid if mariadb.proc else -1] = "MariaDB"
        fixed[os.getpid()] = "load clients (this process)"
        ts_proc = psutil.Process(ts.pid)
        for p in [ts_proc, *ts_proc.children(recursive=True)]:
            if p.pid not in fixed:
                fixed[p.pid] = "TorchServe frontend (JVM)" if p.name() == "java" else "TorchServe launcher"
        roots: dict[int, str] = {}
        for name, pid in stack.pids().items():  # web0, worker1, proxy: by the layout's service
            service = LAYOUT[name.rstrip("0123456789")]
            roots[pid] = "web" if service.name == "web" else service.process_types[0]
        monitor = ProcessMonitor(fixed, roots)
        _log(f"{config.label}: {clients} clients x {requests_per_client} requests x {images} images, model={model}")
        monitor.start()
        t0 = time.monotonic()
        results: list[UploadResult] = upload_load(
            stack, frames, clients, requests_per_client, images, model=model, think_s=think_s
        )
        t_uploaded = time.monotonic()
        accepted = sorted({a for r in results if r.status == 201 for a in r.analyses} - warm_ids)
        ids = ",".join(str(a) for a in accepted) or "0"
        final_at = None
        try:
            wait_until(
                lambda: (
                    _db_rows(
                        mariadb,
                        "portal",
                        f"SELECT COUNT(*) FROM analyses_analysis WHERE status='pending' AND id IN ({ids})",
                    )[0][0]
                    == "0"
                ),
                1800,
                0.5,
                f"{config.label}: all analyses final",
            )
            final_at = time.monotonic()
        except TimeoutError as exc:
            _log(str(exc))
        monitor.stop()
        rows = _db_rows(
            mariadb,
            "portal",
            "SELECT status, TIMESTAMPDIFF(MICROSECOND, created_at, completed_at), latency_ms, "
            "TIMESTAMPDIFF(MICROSECOND, (SELECT MIN(created_at) FROM analyses_analysis WHERE id IN "
            f"({ids})), completed_at) FROM analyses_analysis WHERE id IN ({ids})",
        )
        report = _storage_report(stack)
        log = stack.log_text()
    finally:
        stack.stop()
        ts_stop(info=ts)
        mariadb.stop()
    statuses = Counter(r[0] for r in rows)
    done = [r for r in rows if r[0] == "done"]
    result_s = [int(r[1]) / 1e6 for r in done if r[1] != "NULL"]
    ts_ms = [float(r[2]) for r in done if r[2] != "NULL"]
    span_s = max((int(r[3]) / 1e6 for r in rows if r[3] != "NULL"), default=0.0)
    window_s = (final_at - t0) if final_at else (time.monotonic() - t0)
    images_accepted = sum(r.images for r in results if r.status == 201)
    latencies = [r.latency_s for r in results if r.status == 201]
    out = {
        "config": {"web": config.web, "jobs": config.jobs, "ts_workers": config.ts_workers},
        "label": config.label,
        "web_processes_per_instance": web_processes,
        "job_workers_per_cluster": job_workers,
        "models": models,
        "archives": {m: _sha256(model_store / f"{m}.mar")[:12] for m in models},
        "model": model,
        "clients": clients,
        "requests_per_client": requests_per_client,
        "images_per_request": images,
        "think_s": think_s,
        "uploads": len(results),
        "uploads_accepted": sum(r.status == 201 for r in results),
        "errors": dict(Counter(f"{r.status} {r.code}".strip() for r in results if r.status != 201)),
        "images_accepted": images_accepted,
        "analyses_accepted": len(accepted),
        "analyses": dict(statuses),
        "not_final": statuses.get("pending", 0),
        "upload_wall_s": round(t_uploaded - t0, 1),
        "window_s": round(window_s, 1),
        "db_span_s": round(span_s, 1),
        "images_per_s": round(images_accepted / window_s, 3) if final_at else None,
        "analyses_per_s": round(len(accepted) / window_s, 3) if final_at else None,
        "upload_p50_s": percentile(latencies, 0.5, 3),
        "upload_p95_s": percentile(latencies, 0.95, 3),
        "result_p50_s": percentile(result_s, 0.5, 3),
        "result_p95_s": percentile(result_s, 0.95, 3),
        "torchserve_call_p50_ms": percentile(ts_ms, 0.5, 1),
        "files_rows_consistent": report["consistent"],
        "tracebacks": log.count("Traceback"),
        "processes": monitor.summary(window_s, len(accepted)),
        "machine": monitor.machine(window_s),
        "latencies_s": [round(v, 4) for v in latencies],
        "result_latencies_s": [round(v, 3) for v in result_s],
    }
    _log(
        f"{config.label}: {out['images_per_s']} images/s, {out['analyses_per_s']} analyses/s, upload p50/p95 "
        f"{out['upload_p50_s']}/{out['upload_p95_s']} s, result p50/p95 {out['result_p50_s']}/{out['result_p95_s']} s, "
        f"errors {out['errors'] or 0}, analyses {out['analyses']}"
    )
    return out


def _sha256(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-store", type=Path, default=REPO / "model_store")
    ap.add_argument(
        "--configs",
        nargs="+",
        default=["1,1,1", "2,2,2"],
        help="web instances,job clusters,TorchServe workers per model (default: all 1, all 2)",
    )
    ap.add_argument("--models", nargs="+", default=model_names(), choices=model_names())
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--think", type=float, default=1.0, help="seconds each client pauses between uploads")
    ap.add_argument("--job-workers", type=int, default=4, help="job worker processes per qcluster (PORTAL_WORKERS)")
    ap.add_argument("--web-processes", type=int, default=1, help="gunicorn processes per web instance")
    ap.add_argument(
        "--max-load", type=float, default=None, help="wait (--max-load-wait) for a 1-minute load below this"
    )
    ap.add_argument("--max-load-wait", type=float, default=600, help="seconds to wait for --max-load")
    ap.add_argument("--measure-anyway", action="store_true", help="measure after --max-load's wait even if busy")
    ap.add_argument("--out", type=Path, default=RESULTS / "scale.md")
    ap.add_argument("--merge", action="store_true", help="keep the other configurations' runs of an earlier run")
    ap.add_argument("--report-only", action="store_true", help="write the report again from --out's JSON")
    args = ap.parse_args(argv)
    if args.report_only:
        data = json.loads(args.out.with_suffix(".json").read_text())
        write_report(data["runs"], data["meta"], args.out)
        return 0

    frames = sorted(ALL4_ORIGINAL.rglob("*.jpg"))
    if not frames:
        raise SystemExit(f"no frames under {ALL4_ORIGINAL} (set LEUKEMIA_SHARED)")
    work = Path(tempfile.mkdtemp(prefix="scale-"))
    runs: list[dict[str, Any]] = []
    busy = ""
    for text in args.configs:
        config = Config.parse(text)
        if args.max_load is not None:
            try:
                wait_until(
                    lambda: os.getloadavg()[0] < args.max_load,
                    args.max_load_wait,
                    10,
                    f"1-minute load < {args.max_load}",
                )
            except TimeoutError as exc:
                if not args.measure_anyway:
                    busy = f"the machine stayed busy ({exc}); not measured: {', '.join(args.configs[len(runs) :])}"
                    break
                _log(f"{exc}; measuring anyway (the load is recorded)")
        load = round(os.getloadavg()[0], 2)
        run = run_config(
            config,
            work,
            args.model_store,
            frames,
            args.clients,
            args.requests,
            args.images,
            args.think,
            list(args.models),
            args.job_workers,
            args.web_processes,
        )
        run["loadavg_before"] = load
        runs.append(run)
    shutil.rmtree(work, ignore_errors=True)
    if not runs:
        raise SystemExit(busy)
    command = command_line("bench.scale", argv)
    for run in runs:
        run.update(command=command, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if args.merge and args.out.with_suffix(".json").exists():
        fresh = {json.dumps(r["config"]) for r in runs}
        earlier = json.loads(args.out.with_suffix(".json").read_text())["runs"]
        runs = [r for r in earlier if json.dumps(r["config"]) not in fresh] + runs
    runs.sort(
        key=lambda r: (r["config"]["web"] + r["config"]["jobs"] + r["config"]["ts_workers"], -r["config"]["ts_workers"])
    )
    meta = {
        "machine": machine(),
        "cpu": cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }
    write_report(runs, meta, args.out)
    _log(f"wrote {args.out}, {args.out.with_suffix('.json').name}, {args.out.with_suffix('.png').name}")
    if busy:
        _log(busy)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
