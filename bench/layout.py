"""The process layout, described once: what runs as which process, and the command each runs.

docker/compose.yaml runs these as containers, docker/k8s and the KServe manifests as workloads, and
``portal.run`` (``make run``) supervises web and worker on one host; the scale and load benchmarks start
them as local processes from :data:`LAYOUT`, and name the processes they measure by its
``process_types`` (tests/bench checks the commands against compose's). Here too: the configuration
files rendered from the ones the containers use, and :class:`ScaleStack`, the compose services as local
processes (N of web and worker, nginx in front).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench.stack import PortalStack, free_port, wait_until
from portal.run import GUNICORN_CONF, MANAGE
from serving.torchserve import DEFAULT_CONFIG, ServerInfo, free_ports, parse_properties

__all__ = [
    "LAYOUT",
    "PROCESS_TYPES",
    "Config",
    "ScaleStack",
    "Service",
    "render_nginx_config",
    "render_torchserve_config",
    "self_signed_cert",
    "start_torchserve",
]

REPO = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = REPO / "docker" / "nginx.conf"


@dataclass(frozen=True)
class Service:
    """One service of the layout: its compose service (and Kubernetes workload) name, the command it runs
    from the repository root (compose's ``command``; empty where the image's own entry point runs), and
    the names the process monitor gives its processes (the first: the process started, and what it starts
    unless named otherwise)."""

    name: str
    command: tuple[str, ...]
    process_types: tuple[str, ...]


#: in the order the scale report lists process types
LAYOUT: dict[str, Service] = {
    s.name: s
    for s in (
        Service("proxy", (), ("proxy (nginx)",)),
        Service(
            "web",
            ("gunicorn", "--config", str(GUNICORN_CONF.relative_to(REPO)), "portal.config.wsgi:application"),
            ("web (gunicorn master)", "web (gunicorn worker)"),
        ),
        Service("worker", ("python", str(MANAGE.relative_to(REPO)), "qcluster"), ("job worker (qcluster)",)),
        Service("torchserve", (), ("TorchServe frontend (JVM)", "TorchServe launcher")),
        Service("mariadb", (), ("MariaDB",)),
        Service("migrate", ("python", str(MANAGE.relative_to(REPO)), "migrate", "--noinput"), ()),
    )
}
#: every process type the scale benchmark measures, the load clients (the benchmark itself) last
PROCESS_TYPES = (*(t for s in LAYOUT.values() for t in s.process_types), "load clients (this process)")


def local_argv(service: str) -> list[str]:
    """:data:`LAYOUT`'s command for ``service`` as this machine runs it: this virtualenv's python and
    gunicorn, the repository's paths absolute."""
    argv = list(LAYOUT[service].command)
    if argv[0] == "python":
        argv[0] = sys.executable
    elif argv[0] == "gunicorn":
        argv[0] = str(Path(sys.executable).with_name("gunicorn"))
    return [str(REPO / a) if (REPO / a).is_file() else a for a in argv]


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
        for step in (LAYOUT["migrate"].command[2:], ("ensure_demo_admin",)):  # the `migrate` service; the demo admin
            proc = self.manage(*step, timeout_s=300)
            if proc.returncode != 0:
                raise RuntimeError(f"manage.py {step[0]} failed: {proc.stderr[-3000:]}")
        self.web_ports = [free_port() for _ in range(self.web_instances)]
        for i, port in enumerate(self.web_ports):
            self._spawn(f"web{i}", local_argv("web"), dict(self.env(), PORTAL_BIND=f"127.0.0.1:{port}"))
        for i in range(self.job_clusters):
            self._spawn(f"worker{i}", local_argv("worker"))
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


def start_torchserve(model_store: Path, workdir: Path, workers: int, models: list[str]) -> ServerInfo:
    from serving.torchserve import start

    workdir.mkdir(parents=True, exist_ok=True)
    config = render_torchserve_config(DEFAULT_CONFIG, workers, workdir.parent / f"{workdir.name}.properties")
    return start(
        model_store, models=models, workdir=workdir, config=config, ports=free_ports(), torch_threads=1, timeout_s=300
    )
