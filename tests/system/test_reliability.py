"""The whole path as `make run` runs it (gunicorn + job cluster, supervised) under load and faults.

Each test starts ``python -m portal.run`` on its own port, database and storage (bench.stack), against
a real TorchServe, uploads real smear frames through the API from concurrent clients, and checks that
every accepted analysis ends final (done, or rejected/failed with a reason), none is lost or stuck,
files and rows agree, and nothing crashed. Faults: a job worker killed mid-job, TorchServe stopped and
restarted, a private MariaDB restarted, a supervised child killed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from bench.stack import MariaDB, PortalStack, storage_report, upload_load, wait_until
from serving.torchserve import free_ports
from tests.conftest import DATA_ALL4, kserve_model_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHEAP = "mobilenetv3_lstm"


def frames(n: int = 24) -> list[Path]:
    paths = sorted((DATA_ALL4 / "original").rglob("*.jpg"))
    if not paths:
        pytest.fail(f"no smear frames under {DATA_ALL4}")
    return paths[:: max(1, len(paths) // n)][:n]


def _mysql_up() -> bool:
    return subprocess.run(["mysqladmin", "-h", "127.0.0.1", "-u", "root", "ping"], capture_output=True).returncode == 0


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Any]:
    stacks: list[PortalStack] = []

    def make(database_url: str | None = None, **kwargs: Any) -> PortalStack:
        var = tmp_path / f"portal{len(stacks)}"
        stack = PortalStack(var_dir=var, database_url=database_url or f"sqlite:///{var}/portal.sqlite3", **kwargs)
        stacks.append(stack)
        stack.start()
        return stack

    yield make
    for stack in stacks:
        stack.stop()


def _all_final(stack: PortalStack) -> bool:
    report = storage_report(stack)
    return report["analyses"].get("pending", 0) == 0 and report["queued_jobs"] == 0


def _assert_clean(stack: PortalStack, accepted: set[int]) -> dict[str, Any]:
    """Every accepted analysis is a row, final; files and rows agree; no crash or lock error in the log."""
    report = storage_report(stack)
    assert report["consistent"], report
    assert sum(report["analyses"].values()) == len(accepted), report
    assert report["analyses"].get("pending", 0) == 0
    log = stack.log_text()
    assert "database is locked" not in log
    assert "Traceback" not in log, log[-4000:]
    return report


def _accepted(results: list[Any]) -> set[int]:
    return {a for r in results if r.status == 201 for a in r.analyses}


@pytest.mark.parametrize("database", ["sqlite", "mysql"])
def test_concurrent_uploads_lose_nothing(database: str, stack_factory: Any, torchserve: Any, tmp_path: Path) -> None:
    url = None
    if database == "mysql":
        if not _mysql_up():
            pytest.skip("no MariaDB at 127.0.0.1:3306")
        name = f"portal_reliability_{os.getpid()}"
        subprocess.run(
            ["mariadb", "-h", "127.0.0.1", "-u", "root", "-e", f"DROP DATABASE IF EXISTS {name}"], check=True
        )
        subprocess.run(["mariadb", "-h", "127.0.0.1", "-u", "root", "-e", f"CREATE DATABASE {name}"], check=True)
        url = f"mysql://root:@127.0.0.1:3306/{name}"
    try:
        stack = stack_factory(url, torchserve_url=torchserve.inference_url, torchserve_workdir=torchserve.workdir)
        results = upload_load(stack, frames(), clients=8, requests_per_client=2, images_per_request=2)
        assert [r.status for r in results] == [201] * 16
        accepted = _accepted(results)
        assert len(accepted) == 16 * 2 * 4
        wait_until(lambda: _all_final(stack), 300, 1.0, "all analyses final")
        report = _assert_clean(stack, accepted)
        assert report["analyses"] == {"done": len(accepted)} and report["done_without_heatmap"] == 0
        assert all(c["restarts"] == 0 for c in stack.state()["children"].values())
    finally:
        if url:
            subprocess.run(["mariadb", "-h", "127.0.0.1", "-u", "root", "-e", f"DROP DATABASE IF EXISTS {name}"])


def _running(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db, timeout=10) as conn:
        rows = conn.execute(
            "SELECT id, claimed_by FROM analyses_analysis WHERE status = 'pending' AND stage = 'running'"
        ).fetchall()
    return [(int(i), str(c)) for i, c in rows]


def test_job_worker_killed_mid_job_is_finished_by_another(stack_factory: Any, torchserve: Any) -> None:
    stack = stack_factory(
        torchserve_url=torchserve.inference_url, torchserve_workdir=torchserve.workdir, models=["xception_bigru"]
    )
    db = stack.var_dir / "portal.sqlite3"
    results = upload_load(
        stack, frames(8), clients=1, requests_per_client=1, images_per_request=8, model="xception_bigru"
    )
    accepted = _accepted(results)
    running: list[tuple[int, str]] = []

    def caught() -> bool:
        running[:] = _running(db)
        return bool(running)

    wait_until(caught, 60, 0.02, "a job running")
    victim_id, claimed_by = running[0]
    victim_pid = int(claimed_by.rsplit(":", 1)[1])
    os.kill(victim_pid, signal.SIGKILL)
    killed_at = time.monotonic()

    def victim_done() -> bool:
        with sqlite3.connect(db, timeout=10) as conn:
            row = conn.execute("SELECT status, claimed_by FROM analyses_analysis WHERE id = ?", (victim_id,)).fetchone()
        return row[0] == "done"

    waited = wait_until(victim_done, 45, 0.2, f"analysis {victim_id} done after its worker was killed")
    assert waited <= 30 + 1, f"picked up after {waited:.1f} s"
    with sqlite3.connect(db, timeout=10) as conn:
        (finisher,) = conn.execute("SELECT claimed_by FROM analyses_analysis WHERE id = ?", (victim_id,)).fetchone()
        completions = conn.execute(
            "SELECT COUNT(*) FROM audit_auditevent WHERE action = 'analysis.complete' AND object_id = ?",
            (str(victim_id),),
        ).fetchone()[0]
    assert finisher != claimed_by and completions == 1
    wait_until(lambda: _all_final(stack), 120, 0.5, "all final")
    _assert_clean(stack, accepted)
    assert "reincarnated worker" in stack.log_text() or time.monotonic() - killed_at > 0


def test_torchserve_stopped_and_restarted_mid_run(stack_factory: Any, model_store: Path, tmp_path: Path) -> None:
    from serving.torchserve import start, stop

    ports = free_ports()
    work = tmp_path / "ts"
    ts = start(model_store, models=[CHEAP], workdir=work, ports=ports, torch_threads=1)
    stack = stack_factory(torchserve_url=ts.inference_url, torchserve_workdir=str(work), models=[CHEAP])
    try:
        first = upload_load(stack, frames(), clients=4, requests_per_client=2, images_per_request=2, model=CHEAP)
        stop(info=ts)
        during = upload_load(stack, frames(), clients=4, requests_per_client=1, images_per_request=2, model=CHEAP)
        assert [r.status for r in first + during] == [201] * 12  # uploads never depend on the model server
        accepted = _accepted(first + during)
        waiting = wait_until(
            lambda: storage_report(stack)["pending_stages"].get("waiting", 0) > 0, 60, 0.5, "analyses waiting"
        )
        ready = requests.get(f"{stack.url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["checks"]["model_server"]["ok"] is False
        some = stack.api("get", "/api/analyses/?status=pending").json()["results"]
        assert any("Waiting for the model server since" in a["progress"] for a in some), some[:2]
        ts = start(model_store, models=[CHEAP], workdir=work, ports=ports, torch_threads=1)
        back = time.monotonic()
        wait_until(lambda: _all_final(stack), 60, 0.5, "all final within 60 s of TorchServe's return")
        report = _assert_clean(stack, accepted)
        assert report["analyses"] == {"done": len(accepted)}, report
        print(f"waiting seen after {waiting:.1f} s; all final {time.monotonic() - back:.1f} s after restart")
    finally:
        stop(info=ts)


def test_through_kserve_many_uploads_and_a_model_server_killed_mid_run(
    stack_factory: Any, kserve_torchserve: Any, tmp_path: Path
) -> None:
    """The portal on the Open Inference Protocol behind KServe's model server (as on Kubernetes): many
    uploads at once, then the model server killed while their analyses run (SIGKILL: the connections
    in flight drop), more uploads while it is down, and a new one on the same address. Every analysis
    ends done, with its heatmap; none is lost, failed or run twice."""
    port = free_ports()["inference"]
    with kserve_model_server(kserve_torchserve, tmp_path / "kserve.log", port) as (url, proc):
        stack = stack_factory(
            torchserve_url=url,
            torchserve_workdir=str(kserve_torchserve.workdir),
            models=[CHEAP],
            settings_env={"PORTAL_INFERENCE_PROTOCOL": "v2"},
        )
        first = upload_load(stack, frames(), clients=8, requests_per_client=3, images_per_request=2, model=CHEAP)
        assert [r.status for r in first] == [201] * 24
        wait_until(lambda: storage_report(stack)["analyses"].get("done", 0) >= 4, 60, 0.1, "analyses under way")
        proc.kill()
        proc.wait(timeout=30)
        at_kill = storage_report(stack)["analyses"]
    during = upload_load(stack, frames(), clients=4, requests_per_client=1, images_per_request=2, model=CHEAP)
    assert [r.status for r in during] == [201] * 4  # uploads never depend on the model server
    accepted = _accepted(first + during)
    assert at_kill.get("pending", 0) > 0, f"every analysis was final before the kill: {at_kill}"
    wait_until(lambda: storage_report(stack)["pending_stages"].get("waiting", 0) > 0, 60, 0.5, "analyses waiting")
    ready = requests.get(f"{stack.url}/readyz", timeout=10).json()["checks"]["model_server"]
    assert ready["ok"] is False and f"{url}/v2/health/ready" in ready["detail"], ready
    with kserve_model_server(kserve_torchserve, tmp_path / "kserve.log", port):
        back = time.monotonic()
        wait_until(lambda: _all_final(stack), 90, 0.5, "all final after KServe's model server came back")
        report = _assert_clean(stack, accepted)
    assert report["analyses"] == {"done": len(accepted)} and report["done_without_heatmap"] == 0, report
    with sqlite3.connect(stack.var_dir / "portal.sqlite3", timeout=10) as conn:
        completions = conn.execute(
            "SELECT object_id, COUNT(*) FROM audit_auditevent WHERE action = 'analysis.complete' GROUP BY object_id"
        ).fetchall()
    assert {int(i) for i, _ in completions} == accepted and all(n == 1 for _, n in completions)
    print(f"at the kill: {at_kill}; all final {time.monotonic() - back:.1f} s after the model server returned")


def test_mariadb_restart_mid_run_answers_503_and_loses_nothing(
    stack_factory: Any, torchserve: Any, tmp_path: Path
) -> None:
    if not Path("/usr/sbin/mariadbd").exists():
        pytest.skip("mariadbd not installed")
    db = MariaDB(tmp_path / "mariadb")
    db.start()
    try:
        db.execute("CREATE DATABASE portal")
        stack = stack_factory(
            f"{db.url_root}/portal",
            torchserve_url=torchserve.inference_url,
            torchserve_workdir=torchserve.workdir,
            models=[CHEAP],
        )
        before = upload_load(stack, frames(), clients=4, requests_per_client=2, images_per_request=2, model=CHEAP)
        db.stop()
        during = upload_load(stack, frames(), clients=4, requests_per_client=1, images_per_request=2, model=CHEAP)
        assert requests.get(f"{stack.url}/healthz", timeout=10).status_code == 200
        ready = requests.get(f"{stack.url}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["checks"]["database"]["ok"] is False
        db.start()
        restarted = time.monotonic()
        wait_until(lambda: requests.get(f"{stack.url}/readyz", timeout=10).status_code == 200, 60, 1, "ready again")
        after = upload_load(stack, frames(), clients=4, requests_per_client=1, images_per_request=2, model=CHEAP)
        assert [r.status for r in before + after] == [201] * 12
        for r in during:  # a clear answer, never a crash page or a dropped connection
            assert (r.status, r.code) == (503, "database_unavailable"), r
        accepted = _accepted(before + after)
        wait_until(lambda: _all_final(stack), 90, 1.0, "all final after the database came back")
        # no row lost its file; a file whose upload's commit failed with the connection is an orphan
        # until the sweep (which runs every minute in the cluster) removes it
        assert storage_report(stack)["rows_without_file"] == []
        report = storage_report(stack, sweep=True)
        assert report["consistent"], report
        assert report["analyses"] == {"done": len(accepted)}, report
        assert stack.proc is not None and stack.proc.poll() is None  # the supervisor never gave up
        print(f"all final {time.monotonic() - restarted:.1f} s after MariaDB restarted")
    finally:
        db.stop()


def test_supervisor_restarts_a_killed_child_and_stops_everything(stack_factory: Any, torchserve: Any) -> None:
    stack = stack_factory(torchserve_url=torchserve.inference_url, torchserve_workdir=torchserve.workdir)
    for name in ("job workers", "web server"):
        old = stack.child_pid(name)
        os.killpg(old, signal.SIGKILL)
        wait_until(lambda n=name, o=old: stack.state()["children"][n]["pid"] != o, 60, 0.2, f"{name} restarted")
        assert stack.state()["children"][name]["restarts"] == 1
        assert f"the {name} (pid {old}) exited with -9; restarting it" in stack.log_text()
        assert not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE
    wait_until(stack.healthy, 60, 0.5, "web answering again")
    results = upload_load(stack, frames(2), clients=1, requests_per_client=1, images_per_request=2, model=CHEAP)
    assert [r.status for r in results] == [201]
    wait_until(lambda: _all_final(stack), 60, 0.5, "jobs run by the restarted cluster")
    pids = [c["pid"] for c in stack.state()["children"].values()]
    descendants = [p.pid for pid in pids for p in psutil.Process(pid).children(recursive=True)]
    stack.stop()  # SIGTERM to the supervisor: every child and grandchild goes
    for pid in pids + descendants:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
