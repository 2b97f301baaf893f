"""`make run` (python -m portal.run) stopped or killed at any moment leaves no process of ours behind.

Real processes throughout: the supervisor, gunicorn, the django-q cluster, and (where the test is about
it) a real TorchServe loading one small model (a one-archive model store, the cheapest frame model).
"Ours" means every process whose environment carries this test's PORTAL_VAR_DIR: the supervisor hands
its environment to all it starts (the watchdog, gunicorn, the cluster, TorchServe's launcher, its JVM
and the JVM's Python workers), so nothing of ours can hide from the check.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from bench.stack import free_port, wait_until
from serving.torchserve import PGID_FILE
from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHEAP = "mobilenetv3_lstm"
#: the watchdog's grace (serving.lifeline.DEFAULT_GRACE_S) plus time to notice and to exit
GONE_WITHIN_S = 20.0


def _consecutive_free_ports(n: int = 5) -> int:
    """A base port with ``n`` free ports from it (TorchServe's five listeners)."""
    for _ in range(50):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no 5 consecutive free ports")


class Run:
    """One ``python -m portal.run`` with its own var directory, database, ports and TorchServe workdir."""

    def __init__(
        self,
        root: Path,
        model_store: Path | None,
        port: int | None = None,
        var: Path | None = None,
        legacy: bool = False,
    ):
        self.root = root
        self.legacy = legacy
        self.var = var or root / "var"
        self.ts_work = root / "ts"
        self.port = port or free_port()
        self.model_store = model_store
        self.log = root / f"run-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PORTAL_", "TORCHSERVE_"))}
        env.update(
            PYTHONPATH=str(REPO),
            PYTHONUNBUFFERED="1",
            DJANGO_SETTINGS_MODULE="portal.config.settings",
            DATABASE_URL=f"sqlite:///{self.var}/portal.sqlite3",
            PORTAL_VAR_DIR=str(self.var),
            PORTAL_WEB_PROCESSES="1",
            PORTAL_MODELS=CHEAP,
            PORTAL_CELL_MODEL="",
        )
        return env

    def argv(self, *extra: str) -> list[str]:
        argv = [sys.executable, "-m", "portal.run", "--port", str(self.port), "--workers", "1", "--no-demo-admin"]
        argv += ["--torchserve-workdir", str(self.ts_work)]
        if self.model_store is None:
            argv += ["--torchserve-url", "http://127.0.0.1:9"]
        else:
            argv += ["--model-store", str(self.model_store), "--torchserve-port", str(_consecutive_free_ports())]
        return argv + list(extra)

    def start(self) -> Run:
        self.var.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        if self.legacy:  # a `make run` as it was before: children without a parent-death signal
            patch = "import sys, portal.run as r; r.die_with_parent = lambda *a: None; sys.exit(r.main(sys.argv[1:]))"
            argv = [sys.executable, "-c", patch, *argv[3:]]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        return self

    def command(self, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Another portal.run on the same var directory (a second `make run`, or --stop)."""
        return subprocess.run(
            self.argv(*extra), cwd=REPO, env=self.env(), capture_output=True, text=True, timeout=timeout
        )

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"portal.run exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        return requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200

    def ours(self) -> list[psutil.Process]:
        """Every live process carrying this run's PORTAL_VAR_DIR (zombies excluded)."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if proc.environ().get("PORTAL_VAR_DIR") == str(self.var):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def describe(self, procs: list[psutil.Process]) -> list[str]:
        out = []
        for p in procs:
            try:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
            except psutil.Error:
                out.append(f"{p.pid} (gone)")
        return out

    def cleanup(self) -> None:
        for proc in self.ours():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def one_model_store(model_store: Path, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    (store / f"{CHEAP}.mar").symlink_to((model_store / f"{CHEAP}.mar").resolve())
    return store


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[list[Run]]:
    made: list[Run] = []
    yield made
    for run in made:
        run.cleanup()


def _group_members(pgid: int) -> list[str]:
    names = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                names.append(proc.name())
        except (psutil.Error, ProcessLookupError):
            continue
    return names


def _torchserve_loading(run: Run) -> int:
    """Waits until TorchServe's group holds its JVM and a model worker (loading, not ready); its pgid."""
    pgid_file = run.ts_work / PGID_FILE
    wait_until(pgid_file.is_file, 120, 0.1, "TorchServe spawned")
    pgid = int(pgid_file.read_text())

    def loading() -> bool:
        members = _group_members(pgid)
        return "java" in members and len(members) >= 3

    wait_until(loading, 120, 0.1, "TorchServe's JVM and a model worker running")
    assert not (run.ts_work / "server.json").exists(), "TorchServe was ready already: the test came too late"
    return pgid


def _wait_gone(run: Run, timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if not run.ours():
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"still running after {timeout_s:.0f} s: {run.describe(run.ours())}")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "make stop"])
def test_a_stop_during_startup_stops_everything(how: str, one_model_store: Path, tmp_path: Path, runs: Any) -> None:
    """Stopped while TorchServe loads its model: TorchServe (launcher, JVM, worker), the watchdog and the
    supervisor are gone, its records removed."""
    run = Run(tmp_path, one_model_store).start()
    runs.append(run)
    pgid = _torchserve_loading(run)
    assert run.proc is not None
    if how == "make stop":  # the two commands of `make stop`, from another terminal
        stopped = run.command("--stop")
        assert stopped.returncode == 0 and "stopped the portal" in stopped.stdout, stopped
        ts = subprocess.run(
            [sys.executable, "-m", "serving.cli", "stop", "--workdir", str(run.ts_work)],
            cwd=REPO,
            env=run.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ts.returncode == 0, ts
    else:
        run.proc.send_signal(getattr(signal, how))
    assert run.proc.wait(timeout=60) == 0, run.log.read_text()[-3000:]
    waited = _wait_gone(run, 10)
    assert not _group_members(pgid)
    assert not (run.var / "run.json").exists() and not (run.ts_work / PGID_FILE).exists()
    assert "portal: stopped" in run.log.read_text()
    print(f"{how}: nothing of ours left {waited:.1f} s after the supervisor exited")


def test_make_stop_finds_a_torchserve_still_starting(one_model_store: Path, tmp_path: Path) -> None:
    """`make serve`'s TorchServe whose starter was SIGKILLed before any model was ready (no server.json):
    `make stop` (serving.cli stop) finds it by its process group file and stops it all."""
    work = tmp_path / "ts"
    code = (
        "from serving.torchserve import start, consecutive_ports; "
        f"start({str(one_model_store)!r}, workdir={str(work)!r}, ports=consecutive_ports({_consecutive_free_ports()}))"
    )
    starter = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        wait_until((work / PGID_FILE).is_file, 120, 0.1, "TorchServe spawned")
        pgid = int((work / PGID_FILE).read_text())
        wait_until(lambda: "java" in _group_members(pgid), 120, 0.1, "TorchServe's JVM running")
        starter.kill()
        starter.wait(timeout=10)
        assert not (work / "server.json").exists() and _group_members(pgid)
        stop = subprocess.run(
            [sys.executable, "-m", "serving.cli", "stop", "--workdir", str(work)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stop.returncode == 0 and stop.stdout.strip() == "TorchServe stopped", stop
        assert not _group_members(pgid)
    finally:
        if starter.poll() is None:
            starter.kill()
        if (work / PGID_FILE).is_file():
            os.killpg(int((work / PGID_FILE).read_text()), signal.SIGKILL)


def test_a_sigkilled_supervisor_takes_its_children_down(one_model_store: Path, tmp_path: Path, runs: Any) -> None:
    """SIGKILL (no handler runs): gunicorn, the job cluster and TorchServe (JVM and model worker) die with it."""
    run = Run(tmp_path, one_model_store).start()
    runs.append(run)
    wait_until(run.healthy, 240, 0.5, "portal answering")
    wait_until(lambda: (run.ts_work / "server.json").exists(), 60, 0.2, "TorchServe ready")
    before = run.describe(run.ours())
    names = " ".join(before)
    assert "gunicorn" in names and "qcluster" in names and "java" in names, before
    assert run.proc is not None
    run.proc.kill()
    run.proc.wait(timeout=10)
    waited = _wait_gone(run, GONE_WITHIN_S)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{run.port}/healthz", timeout=2)
    print(f"{len(before)} processes gone {waited:.1f} s after the SIGKILL")


def test_run_refuses_to_start_over_stale_processes(tmp_path: Path, runs: Any) -> None:
    """A second `make run` beside a live one, one over what a killed one left, and one on a taken port: each
    refuses at once, naming what is in the way; `make stop` then stops the leftovers and a new `make run`
    starts. The leftovers are made as an older `make run` left them: its children without a parent-death
    signal, its watchdog killed before it."""
    run = Run(tmp_path, None, legacy=True).start()
    runs.append(run)
    wait_until(run.healthy, 120, 0.5, "portal answering")

    second = run.command()
    assert second.returncode == 2 and "the portal is already running from" in second.stderr, second

    state = json.loads((run.var / "run.json").read_text())
    os.kill(state["lifeline"], signal.SIGKILL)  # what an older `make run` left: no watchdog
    assert run.proc is not None
    run.proc.kill()
    run.proc.wait(timeout=10)
    time.sleep(2)
    left = run.ours()
    assert left, "nothing left to be stale"
    assert requests.get(f"http://127.0.0.1:{run.port}/healthz", timeout=5).status_code == 200  # still serving

    t0 = time.monotonic()
    over = run.command()
    assert over.returncode == 2, over
    assert "processes of an earlier `make run`" in over.stderr and "make stop" in over.stderr, over.stderr
    assert "web server (process group" in over.stderr and "job workers (process group" in over.stderr
    assert time.monotonic() - t0 < 30

    elsewhere = Run(tmp_path / "other", None, port=run.port)
    taken = elsewhere.command()
    assert taken.returncode == 2 and f"port {run.port} on 127.0.0.1 is in use" in taken.stderr, taken.stderr

    stopped = run.command("--stop")
    assert stopped.returncode == 0 and "stopped what an earlier run left" in stopped.stdout, stopped
    _wait_gone(run, 5)
    again = Run(tmp_path, None, port=run.port).start()
    runs.append(again)
    wait_until(again.healthy, 120, 0.5, "portal answering after the stale processes were stopped")
