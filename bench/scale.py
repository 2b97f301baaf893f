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
process and peak memory (RSS and PSS) per process type, sampled with psutil. Writes docs/scale.md,
docs/scale.json and docs/scale.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from bench.stack import MariaDB, PortalStack, UploadResult, free_port, storage_report, upload_load, wait_until
from core.host import cpu_model
from core.paths import ALL4_ORIGINAL
from core.registry import model_names
from serving.torchserve import DEFAULT_CONFIG, ServerInfo, free_ports, parse_properties, read_keys

REPO = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = REPO / "docker" / "nginx.conf"
GUNICORN_CONF = REPO / "portal" / "gunicorn.conf.py"
MANAGE = REPO / "portal" / "manage.py"
PROCESS_TYPES = (
    "proxy (nginx)",
    "web (gunicorn master)",
    "web (gunicorn worker)",
    "job worker (qcluster)",
    "TorchServe frontend (JVM)",
    "TorchServe launcher",
    "MariaDB",
    "load clients (this process)",
)

__all__ = [
    "Config",
    "ProcessMonitor",
    "ScaleStack",
    "main",
    "render_nginx_config",
    "render_torchserve_config",
    "run_config",
]


def _log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


@dataclass(frozen=True)
class Config:
    """How many of each: web instances (containers), job clusters (containers), TorchServe workers per model."""

    web: int
    jobs: int
    ts_workers: int

    @classmethod
    def parse(cls, text: str) -> Config:
        web, jobs, ts = (int(v) for v in text.split(","))
        return cls(web, jobs, ts)

    @property
    def label(self) -> str:
        return f"web {self.web}, jobs {self.jobs}, TS {self.ts_workers}/model"


# --- configuration files rendered from the ones the containers use ---------------------------------


def render_torchserve_config(
    base: Path, workers: int, out: Path, *, batch: int | None = None, delay_ms: int | None = None
) -> Path:
    """``base`` (config.properties) with ``workers`` workers for every model (min = max = default), and
    optionally every batched model's (batchSize > 1) ``batchSize`` and ``maxBatchDelay`` replaced."""
    props = dict(parse_properties(base.read_text()))
    props["default_workers_per_model"] = str(workers)
    per_model = json.loads(props["models"])
    for versions in per_model.values():
        for settings in versions.values():
            settings["minWorkers"] = settings["maxWorkers"] = workers
            if settings.get("batchSize", 1) > 1:  # the frame classifiers (wbc_cells answers one frame a call)
                settings["batchSize"] = settings["batchSize"] if batch is None else batch
                settings["maxBatchDelay"] = settings["maxBatchDelay"] if delay_ms is None else delay_ms
    props["models"] = json.dumps(per_model, separators=(",", ":"))
    out.write_text(
        f"# {base} with {workers} workers per model (bench.scale)\n" + "".join(f"{k}={v}\n" for k, v in props.items())
    )
    return out


def _sub_once(pattern: str, repl: str, text: str, count: int = 1) -> str:
    new, n = re.subn(pattern, lambda _m: repl, text)
    if n != count:
        raise ValueError(f"{NGINX_TEMPLATE.name}: expected {count} match(es) of {pattern!r}, found {n}")
    return new


def render_nginx_config(
    template: str,
    prefix: Path,
    listen_port: int,
    web_ports: list[int],
    inference_listen_port: int,
    torchserve_url: str,
    cert: Path,
    key: Path,
) -> str:
    """docker/nginx.conf for this machine: paths under ``prefix``, listeners on 127.0.0.1, the portal's
    ``proxy_pass`` to an upstream of ``web_ports`` (nginx's round robin), TorchServe at ``torchserve_url``.

    Every other line (TLS settings, body sizes, timeouts, headers, the inference routes) stays as the
    container has it; a template that no longer has a line this changes makes the render fail.
    """
    text = _sub_once(r"/tmp/", f"{prefix}/", template, count=len(re.findall(r"/tmp/", template)) or 1)
    text = _sub_once(r"/run/secrets/tls_cert;", f"{cert};", text)
    text = _sub_once(r"/run/secrets/tls_key;", f"{key};", text)
    text = _sub_once(r"listen 8443 ssl;", f"listen 127.0.0.1:{listen_port} ssl;", text)
    text = _sub_once(r"listen 9443 ssl;", f"listen 127.0.0.1:{inference_listen_port} ssl;", text)
    text = _sub_once(r"proxy_pass http://127\.0\.0\.1:8000;", "proxy_pass http://portal_web;", text)
    text = _sub_once(r"proxy_pass http://127\.0\.0\.1:8080;", f"proxy_pass {torchserve_url.rstrip('/')};", text, 2)
    upstream = "upstream portal_web {\n" + "".join(f"    server 127.0.0.1:{p};\n" for p in web_ports) + "  }\n"
    text = _sub_once(r"http \{\n", "http {\n  " + upstream, text)
    if os.geteuid() == 0:  # the container's nginx runs master and workers as one unprivileged user
        text = "user root;\n" + text
    return text


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 (the placeholder the lab replaces with its own)."""
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


# --- the stack -------------------------------------------------------------------------------------


@dataclass
class ScaleStack(PortalStack):
    """The compose services as local processes: N gunicorn, N qcluster, nginx in front (``port``).

    ``web_processes`` (gunicorn workers per web instance) defaults to 1 here, so that N web instances
    are N request-serving processes; ``workers`` is the job worker processes per qcluster.
    """

    web_instances: int = 1
    job_clusters: int = 1
    web_processes: int = 1
    inference_proxy_port: int = field(default_factory=free_port)
    web_ports: list[int] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cert: Path | None = None
    _ca_bundle_before: str | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            DJANGO_SETTINGS_MODULE="portal.config.settings_production",
            DJANGO_SECRET_KEY=f"scale-bench-{os.getpid()}-{self.port}-not-a-secret-0123456789abcdef",
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            TORCHSERVE_URL=self.torchserve_url,
            TORCHSERVE_WORKDIR=str(Path(self.torchserve_workdir).resolve()),
            PORTAL_WORKERS=str(self.workers),
        )
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.var_dir / f"{name}.log", "ab")  # noqa: SIM115 (kept open by the child)
        self.procs[name] = subprocess.Popen(
            argv, cwd=REPO, env=env or self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def start(self, timeout_s: float = 180) -> None:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        for step in (("migrate", "--noinput"), ("ensure_demo_admin",)):  # the `migrate` service; the demo admin
            proc = self.manage(*step, timeout_s=300)
            if proc.returncode != 0:
                raise RuntimeError(f"manage.py {step[0]} failed: {proc.stderr[-3000:]}")
        gunicorn = str(Path(sys.executable).with_name("gunicorn"))
        self.web_ports = [free_port() for _ in range(self.web_instances)]
        for i, port in enumerate(self.web_ports):
            env = dict(self.env(), PORTAL_BIND=f"127.0.0.1:{port}")
            self._spawn(f"web{i}", [gunicorn, "--config", str(GUNICORN_CONF), "portal.config.wsgi:application"], env)
        for i in range(self.job_clusters):
            self._spawn(f"jobs{i}", [sys.executable, str(MANAGE), "qcluster"])
        self._start_proxy()
        wait_until(self.healthy, timeout_s, what=f"portal behind nginx at {self.url} (logs: {self.var_dir})")
        if not self.token:
            self._login_and_make_specimen()

    def _start_proxy(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            raise RuntimeError("nginx is not installed: run requirements/system-deps.sh (make setup)")
        prefix = self.var_dir / "nginx"
        prefix.mkdir(parents=True, exist_ok=True)
        self.cert, key = self_signed_cert(prefix)
        conf = prefix / "nginx.conf"
        conf.write_text(
            render_nginx_config(
                NGINX_TEMPLATE.read_text(),
                prefix,
                self.port,
                self.web_ports,
                self.inference_proxy_port,
                self.torchserve_url,
                self.cert,
                key,
            )
        )
        argv = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log"), "-g", "daemon off;"]
        check = subprocess.run([*argv[:-2], "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed: {check.stderr}")
        self._spawn("proxy", argv)
        # The clients verify the proxy's certificate against this one (requests reads REQUESTS_CA_BUNDLE).
        self._ca_bundle_before = os.environ.get("REQUESTS_CA_BUNDLE")
        os.environ["REQUESTS_CA_BUNDLE"] = str(self.cert)

    def healthy(self) -> bool:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; log: {self.var_dir / (name + '.log')}")
        for port in self.web_ports:  # each instance directly, as the container's health check does
            r = requests.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Forwarded-Proto": "https"}, timeout=2)
            if r.status_code != 200:
                return False
        return requests.get(f"{self.url}/healthz", timeout=2, verify=str(self.cert)).status_code == 200

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.var_dir.glob("*.log")))

    def stop(self) -> None:
        for proc in self.procs.values():  # SIGTERM to all first: they shut down in parallel
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its group (workers)
            proc.wait()
        self.procs.clear()
        if self.cert is not None and os.environ.get("REQUESTS_CA_BUNDLE") == str(self.cert):
            if self._ca_bundle_before is None:
                os.environ.pop("REQUESTS_CA_BUNDLE", None)
            else:
                os.environ["REQUESTS_CA_BUNDLE"] = self._ca_bundle_before


# --- what each process costs -----------------------------------------------------------------------


def model_worker_pids(ts: ServerInfo) -> dict[int, str]:
    """TorchServe's model worker processes: pid -> model (from the management API)."""
    headers = {"Authorization": f"Bearer {read_keys(ts.workdir).management}"}
    out: dict[int, str] = {}
    for model in ts.models:
        r = requests.get(f"{ts.management_url}/models/{model}", headers=headers, timeout=10)
        r.raise_for_status()
        for worker in r.json()[0].get("workers", []):
            if worker.get("pid"):
                out[int(worker["pid"])] = model
    return out


@dataclass
class _Sample:
    kind: str
    cpu_first: float
    cpu_last: float
    rss_max: int = 0
    pss_max: int = 0


class ProcessMonitor:
    """Samples CPU time and memory of every process of the stack (psutil) until stopped."""

    def __init__(self, kinds: dict[int, str], roots: dict[int, str], interval_s: float = 2.0) -> None:
        self.fixed = kinds  # pid -> process type, for processes known by pid
        self.roots = roots  # pid -> process type for it and its descendants (unless classified otherwise)
        self.interval_s = interval_s
        self.samples: dict[int, _Sample] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.busy_s = [0.0, 0.0]  # the whole machine's busy CPU seconds at start and stop
        self.everyone: list[dict[int, tuple[str, float]]] = [{}, {}]  # every process's CPU s at start and stop
        self.own_children_s = [0.0, 0.0]  # this process's finished subprocesses (database polls, manage.py)

    @staticmethod
    def _everyone() -> dict[int, tuple[str, float]]:
        out: dict[int, tuple[str, float]] = {}
        for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
            t = p.info["cpu_times"]
            if t is not None:
                cmd = " ".join(p.info["cmdline"] or [p.info["name"] or ""])
                out[p.pid] = (cmd[:100], t.user + t.system)
        return out

    @staticmethod
    def _own_children_s() -> float:
        t = psutil.Process().cpu_times()
        return float(t.children_user + t.children_system)

    @staticmethod
    def _machine_busy_s() -> float:
        t = psutil.cpu_times()
        return float(
            sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        )

    def _classify(self) -> dict[int, str]:
        kinds: dict[int, str] = {}
        for root, kind in self.roots.items():
            try:
                proc = psutil.Process(root)
                family = [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for p in family:
                kinds.setdefault(p.pid, kind)
        for pid, kind in self.fixed.items():
            kinds[pid] = kind
        return kinds

    def _classify_gunicorn(self, kinds: dict[int, str]) -> dict[int, str]:
        for pid, kind in list(kinds.items()):
            if kind == "web":
                try:
                    parent = psutil.Process(pid).ppid()
                except psutil.NoSuchProcess:
                    continue
                kinds[pid] = (
                    "web (gunicorn worker)"
                    if kinds.get(parent) in ("web", "web (gunicorn master)")
                    else ("web (gunicorn master)")
                )
        return kinds

    def sample(self) -> None:
        kinds = self._classify_gunicorn(self._classify())
        for pid, kind in kinds.items():
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    t = proc.cpu_times()
                    cpu = t.user + t.system
                    mem = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            s = self.samples.get(pid)
            if s is None:
                s = self.samples[pid] = _Sample(kind, cpu, cpu)
            s.kind = kind
            s.cpu_last = cpu
            s.rss_max = max(s.rss_max, mem.rss)
            s.pss_max = max(s.pss_max, getattr(mem, "pss", mem.rss))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> None:
        self.sample()  # the CPU times at the start of the window
        self.busy_s[0] = self._machine_busy_s()
        self.everyone[0] = self._everyone()
        self.own_children_s[0] = self._own_children_s()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.busy_s[1] = self._machine_busy_s()
        self.everyone[1] = self._everyone()
        self.own_children_s[1] = self._own_children_s()

    def machine(self, window_s: float) -> dict[str, Any]:
        """Cores the whole machine was busy; how much of it went to the benchmark's own subprocesses
        (database polls), and to other processes (someone else's work: the busiest named)."""
        busy = self.busy_s[1] - self.busy_s[0]
        stack = sum(s.cpu_last - s.cpu_first for s in self.samples.values())
        own = self.own_children_s[1] - self.own_children_s[0]
        before, after = self.everyone
        others = {
            pid: (cmd, cpu - before.get(pid, ("", 0.0))[1])
            for pid, (cmd, cpu) in after.items()
            if pid not in self.samples
        }
        top = sorted(others.values(), key=lambda v: -v[1])[:5]
        return {
            "busy_cores": round(busy / window_s, 3),
            "bench_subprocesses_cores": round(own / window_s, 3),
            "outside_stack_cores": round(max(0.0, busy - stack - own) / window_s, 3),
            "outside_busiest": [{"cmd": c, "cores": round(v / window_s, 3)} for c, v in top if v > 0.01 * window_s],
        }

    def summary(self, window_s: float, analyses: int) -> dict[str, Any]:
        """Per process type: processes, CPU seconds, cores (CPU s / window), CPU ms per analysis,
        peak RSS per process, summed peak PSS."""
        out: dict[str, Any] = {}
        by_kind: dict[str, list[_Sample]] = {}
        for s in self.samples.values():
            by_kind.setdefault(s.kind, []).append(s)
        for kind, samples in sorted(by_kind.items()):
            cpu = sum(s.cpu_last - s.cpu_first for s in samples)
            rss = [s.rss_max / 2**20 for s in samples]
            out[kind] = {
                "processes": len(samples),
                "cpu_s": round(cpu, 1),
                "cores": round(cpu / window_s, 3) if window_s else None,
                "cpu_ms_per_analysis": round(1000 * cpu / analyses, 1) if analyses else None,
                "rss_mb_per_process": round(sum(rss) / len(rss), 1),
                "rss_mb_max": round(max(rss), 1),
                "pss_mb_total": round(sum(s.pss_max for s in samples) / 2**20, 1),
            }
        return out


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


def start_torchserve(model_store: Path, workdir: Path, workers: int, models: list[str]) -> ServerInfo:
    from serving.torchserve import start

    workdir.mkdir(parents=True, exist_ok=True)
    config = render_torchserve_config(DEFAULT_CONFIG, workers, workdir.parent / f"{workdir.name}.properties")
    return start(
        model_store, models=models, workdir=workdir, config=config, ports=free_ports(), torch_threads=1, timeout_s=300
    )


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
        for name, pid in stack.pids().items():
            roots[pid] = {"web": "web", "jobs": "job worker (qcluster)", "proxy": "proxy (nginx)"}[
                name.rstrip("0123456789")
            ]
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
        "upload_p50_s": _round(_percentile(latencies, 0.5)),
        "upload_p95_s": _round(_percentile(latencies, 0.95)),
        "result_p50_s": _round(_percentile(result_s, 0.5)),
        "result_p95_s": _round(_percentile(result_s, 0.95)),
        "torchserve_call_p50_ms": _round(_percentile(ts_ms, 0.5), 1),
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


def _round(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(v, nd)


# --- report ----------------------------------------------------------------------------------------


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
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
    fig.savefig(out.with_suffix(".png"), dpi=110)
    plt.close(fig)

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
        "Each configuration starts, as separate local processes, what docker/compose.yaml runs as separate "
        f"containers: a private MariaDB, `manage.py migrate`, TorchServe with {', '.join(r0['models'])} "
        "(docker/torchserve/config.properties, workers per model overridden, 1 torch thread each), N web "
        "instances (`gunicorn --config portal/gunicorn.conf.py portal.config.wsgi:application`, "
        f"{r0['web_processes_per_instance']} gunicorn process(es) x 4 threads each, "
        "`portal.config.settings_production`), N job clusters (`manage.py qcluster`, "
        f"{r0['job_workers_per_cluster']} job worker processes each) and nginx with docker/nginx.conf rendered "
        "for this machine (TLS with a throw-away certificate, an upstream of the N web ports). "
        f"Load: {r0['clients']} concurrent API clients, each sending {r0['requests_per_client']} uploads of "
        f"{r0['images_per_request']} real smear frames with `model={r0['model']}` through the proxy, pausing "
        f"{r0['think_s']} s between uploads (bench.stack.upload_load, as `make loadtest`); the cell model off. "
        "One warm-up upload per configuration is not counted. Throughput: accepted images (and analyses: one "
        "per image and model) divided by the time from the first upload to the last analysis final. "
        "Upload-to-result: an analysis's `completed_at - created_at`. CPU: user + system seconds of each "
        "process over that window (psutil); *cores* = CPU seconds / window. Memory: peak RSS per process "
        "(shared pages counted in each) and the peak PSS summed over the processes of a type (shared pages "
        "split), sampled every 2 s.",
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
        f"![throughput and latency]({out.with_suffix('.png').name})",
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
            "What this means for sizing: docs/deployment.md, Capacity planning.",
        ]
    lines.append("")
    out.write_text("\n".join(lines))


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
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "scale.md")
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
    command = "python -m bench.scale " + shlex.join(sys.argv[1:] if argv is None else argv)
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
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
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
