"""Real services for the reliability tests and the load benchmark: the portal as `make run` starts it,
a private MariaDB that can be restarted, API clients that upload real smear frames.

- :class:`PortalStack` runs ``python -m portal.run`` (gunicorn + the job cluster, supervised) on its
  own port, database and storage, against a given TorchServe; it logs in as the demo admin through
  the API and creates a patient and a specimen to upload to.
- :class:`MariaDB` is a throw-away MariaDB server on a spare port with its own data directory, so a
  test can stop and start it (never the system server on 3306).
- :func:`upload_load` runs N concurrent clients, each sending R multipart uploads of K frames with
  ``model=all`` (or given models), and records each answer's status and latency.
- :func:`storage_report` asks ``manage.py check_storage`` (the operators' consistency check) about
  the stack's database and files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent

__all__ = ["MariaDB", "PortalStack", "UploadResult", "free_port", "storage_report", "upload_load", "wait_until"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.25, what: str = "condition") -> float:
    """Poll ``predicate()`` until true; returns the seconds waited; raises TimeoutError with ``what``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if predicate():
                return time.monotonic() - t0
        except (OSError, requests.RequestException, ValueError):
            pass
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not reached within {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen[bytes] | None, grace_s: float = 60) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it has not exited within ``grace_s``."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class MariaDB:
    """A private MariaDB server (own datadir, socket and port), started and stopped at will."""

    def __init__(self, base_dir: Path, port: int | None = None) -> None:
        self.base = Path(base_dir)
        self.port = port or free_port()
        self.datadir = self.base / "data"
        self.socket = self.base / "mysqld.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url_root(self) -> str:
        return f"mysql://root:@127.0.0.1:{self.port}"

    def install(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if not (self.datadir / "mysql").is_dir():
            subprocess.run(
                [
                    shutil.which("mariadb-install-db") or "mariadb-install-db",
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--user=root" if os.geteuid() == 0 else f"--user={os.environ.get('USER', '')}",
                ],
                check=True,
                capture_output=True,
            )

    def start(self, timeout_s: float = 60) -> None:
        self.install()
        cmd = [
            "/usr/sbin/mariadbd",
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            f"--socket={self.socket}",
            f"--pid-file={self.base / 'mysqld.pid'}",
            "--bind-address=127.0.0.1",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=64M",
            f"--log-error={self.base / 'error.log'}",
        ]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, timeout_s, what=f"MariaDB on port {self.port}")

    def ping(self) -> bool:
        return (
            subprocess.run(
                ["mysqladmin", "-h", "127.0.0.1", "-P", str(self.port), "-u", "root", "ping"],
                capture_output=True,
                timeout=10,
            ).returncode
            == 0
        )

    def execute(self, sql: str) -> None:
        subprocess.run(
            ["mariadb", "-h", "127.0.0.1", "-P", str(self.port), "-u", "root", "-e", sql], check=True, timeout=30
        )

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


@dataclass
class PortalStack:
    """``python -m portal.run`` with its own port, database and var directory, against a TorchServe."""

    var_dir: Path
    database_url: str
    torchserve_url: str
    torchserve_workdir: str
    models: Sequence[str] = ()
    #: the cell model's jobs are off unless named: these runs measure the frame models' pipeline
    cell_model: str = ""
    workers: int = 4
    web_processes: int = 2
    #: further portal settings by environment variable (PORTAL_INFERENCE_PROTOCOL, PORTAL_MODEL_URLS, ...)
    settings_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    token: str = ""
    otp_key: str = ""  # the demo admin's TOTP key (hex), enrolled by _second_factor
    specimen_id: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.var_dir / "run.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PORTAL_", "TORCHSERVE_"))}
        env.update(
            PYTHONPATH=str(REPO),
            DJANGO_SETTINGS_MODULE="portal.config.settings",
            DATABASE_URL=self.database_url,
            PORTAL_VAR_DIR=str(self.var_dir),
            PORTAL_WEB_PROCESSES=str(self.web_processes),
            PYTHONUNBUFFERED="1",
            PORTAL_CELL_MODEL=self.cell_model,
        )
        if self.models:
            env["PORTAL_MODELS"] = ",".join(self.models)
        env.update(self.settings_env)
        return env

    def start(self, timeout_s: float = 180) -> None:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "portal.run",
            "--port",
            str(self.port),
            "--torchserve-url",
            self.torchserve_url,
            "--torchserve-workdir",
            self.torchserve_workdir,
            "--workers",
            str(self.workers),
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.healthy, timeout_s, what=f"portal at {self.url} (log: {self.log_path})")
        if not self.token:
            self._login_and_make_specimen()

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"portal.run exited with {self.proc.returncode}; log: {self.log_path}")
        return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200

    def _second_factor(self, username: str) -> str:
        """A current TOTP code of ``username`` (an operator's enrolment: ``manage.py otp_enrol``)."""
        from binascii import unhexlify

        from django_otp.oath import totp

        if not self.otp_key:
            done = self.manage("otp_enrol", username, "--json")
            if done.returncode != 0:
                raise RuntimeError(f"otp_enrol {username} failed: {done.stderr[-2000:]}")
            self.otp_key = json.loads(done.stdout.strip().splitlines()[-1])["key"]
        return f"{totp(unhexlify(self.otp_key)):06d}"

    def _login_and_make_specimen(self) -> None:
        password = (self.var_dir / "demo-admin-password.txt").read_text().strip()
        # the demo admin needs a second factor: enrolled here as an operator would (manage.py otp_enrol)
        data = {"username": "admin", "password": password, "otp": self._second_factor("admin")}
        r = requests.post(f"{self.url}/api/auth/token/", data=data, timeout=30)
        r.raise_for_status()
        self.token = r.json()["token"]
        mrn = f"LOAD-{os.getpid()}-{self.port}"
        r = self.api("post", "/api/patients/", json={"mrn": mrn, "name": "Load Test", "date_of_birth": "1970-01-01"})
        r.raise_for_status()
        r = self.api("post", "/api/specimens/", json={"patient": r.json()["id"], "accession": f"{mrn}-S"})
        r.raise_for_status()
        self.specimen_id = int(r.json()["id"])

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        headers = {"Authorization": f"Token {self.token}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.url}{path}", headers=headers, **kwargs)

    def state(self) -> dict[str, Any]:
        """portal.run's pid file: the supervisor and each child's pid and restart count."""
        return dict(json.loads((self.var_dir / "run.json").read_text()))

    def child_pid(self, name: str) -> int:
        return int(self.state()["children"][name]["pid"])

    def job_worker_pids(self) -> list[int]:
        """The cluster's processes that run jobs (descendants of the job workers child)."""
        import psutil

        root = psutil.Process(self.child_pid("job workers"))
        return [p.pid for p in root.children(recursive=True)]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def manage(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(REPO / "portal" / "manage.py"), *args],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )


def storage_report(stack: PortalStack, sweep: bool = False) -> dict[str, Any]:
    """``manage.py check_storage --json`` for the stack: counts per status and stage, files vs rows.

    ``sweep``: first run the portal's own sweep with no grace period (re-queue orphaned analyses,
    remove files no row references); only when nothing is being uploaded.
    """
    proc = stack.manage("check_storage", "--json", *(["--sweep-older-than", "0"] if sweep else []))
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"check_storage failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout))


@dataclass
class UploadResult:
    status: int  # HTTP status; 0 when the connection failed
    latency_s: float
    images: int
    analyses: list[int]
    code: str = ""  # the error body's code, if any


def upload_load(
    stack: PortalStack,
    frames: Sequence[Path],
    clients: int,
    requests_per_client: int,
    images_per_request: int,
    model: str = "all",
    stop_event: threading.Event | None = None,
    think_s: float = 0.0,
) -> list[UploadResult]:
    """Concurrent API uploads, each client pausing ``think_s`` between requests; every answer recorded
    (nothing retried by the client)."""
    results: list[UploadResult] = []
    lock = threading.Lock()
    payloads = [f.read_bytes() for f in frames]

    def client(k: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {stack.token}"
        for r in range(requests_per_client):
            if stop_event is not None and stop_event.is_set():
                return
            base = (k * requests_per_client + r) * images_per_request
            files = [
                ("images", (frames[(base + i) % len(frames)].name, payloads[(base + i) % len(frames)], "image/jpeg"))
                for i in range(images_per_request)
            ]
            t0 = time.perf_counter()
            try:
                resp = session.post(
                    f"{stack.url}/api/analyses/",
                    data={"specimen": str(stack.specimen_id), "model": model},
                    files=files,
                    timeout=120,
                )
                status, body = resp.status_code, _json(resp)
            except requests.RequestException:
                status, body = 0, None
            latency = time.perf_counter() - t0
            analyses: list[int] = []
            code = ""
            if status == 201 and isinstance(body, list):
                analyses = [a["id"] for image in body for a in image.get("analyses", [])]
            elif isinstance(body, dict):
                code = str(body.get("code") or body.get("detail") or "")[:60]
            with lock:
                results.append(UploadResult(status, latency, images_per_request, analyses, code))
            if think_s:
                time.sleep(think_s)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _json(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def status_counts(results: Sequence[UploadResult]) -> dict[str, int]:
    return dict(Counter(str(r.status) for r in results))
