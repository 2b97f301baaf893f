"""`make run` (and `make dev`): TorchServe with the four models, the portal's web server and its job
workers, supervised.

Steps: migrate the database (SQLite in var/portal/ unless DATABASE_URL says otherwise), create the
demo admin on first run, start TorchServe through serving.torchserve (or reuse the one already running
from the same working directory, or use ``--torchserve-url``), then start and supervise:

- **web**: gunicorn (``portal/gunicorn.conf.py``, DEBUG off, static files by WhiteNoise); with
  ``--dev`` Django's development server with DEBUG on instead;
- **worker**: the job cluster, ``manage.py qcluster`` (django-q2; ``--workers`` processes);
- **TorchServe**, when this command started it.

A child that exits is started again (with a log line and a growing pause if it keeps dying); it is
never a reason to stop the others. Each child runs in its own process group, so a killed child's own
children (gunicorn's workers, the cluster's worker processes) are cleaned up before it is restarted.

Stopping: Ctrl-C (SIGINT) or SIGTERM stops everything this command started so far, at any moment,
start-up included (TorchServe still loading its models is stopped too). If this process dies without
stopping them (SIGKILL, a crash), its children die with it: a parent-death signal and a watchdog
(serving.lifeline) take down each child's whole process group, TorchServe's JVM and model workers
included. ``python -m portal.run --stop`` (part of ``make stop``) stops a running one from elsewhere.

Records: ``<var>/run.lock`` is held (flock) while a supervisor lives, so a second ``make run`` on the
same var directory refuses at once; ``<var>/run.json`` names the supervisor, its watchdog and the
process groups of its children (for operators, ``--stop`` and tests). A ``make run`` also refuses, with
the processes named and what to do, when processes recorded by an earlier one still run, when its web
port is taken, or when a TorchServe from its working directory is still starting.

Why a small supervisor of our own: it is one Python process with no configuration files (supervisord
or honcho would need a generated config and a second tool to learn), and the children it watches are
themselves supervisors (gunicorn restarts its web processes, the cluster restarts its worker
processes, TorchServe restarts its model workers); it restarts those three and starts TorchServe
through serving.torchserve, which waits for the models to be ready.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from serving.lifeline import Lifeline, die_with_parent, group_alive, kill_groups, pid_alive

REPO = Path(__file__).resolve().parent.parent
MANAGE = REPO / "portal" / "manage.py"
GUNICORN_CONF = REPO / "portal" / "gunicorn.conf.py"
STOP_GRACE_S = 20.0
MAX_RESTART_PAUSE_S = 30.0
STATE_FILE = "run.json"
LOCK_FILE = "run.lock"

__all__ = ["Child", "RefusedError", "main", "stop_running"]


def _restore_promotions(served: Any, model_store: Path) -> None:
    """Make each promoted version the default again after a start (serving.versions; make promote/rollback)."""
    from serving.versions import PromotionError, restore

    try:
        for switched in restore(served, model_store):
            _log(f"promoted version restored: {switched}")
    except (PromotionError, OSError, ValueError) as exc:
        _log(f"promoted versions not restored; the shipped versions serve: {exc}")


def _log(msg: str) -> None:
    print(f"portal: {msg}", file=sys.stderr, flush=True)


class RefusedError(RuntimeError):
    """``make run`` will not start: the message says what is in the way and what to do."""


class _Interrupted(Exception):
    """SIGINT or SIGTERM during start-up: unwinds through the ``finally`` that stops what was started."""


@dataclass
class Child:
    """One supervised command: started in its own process group, restarted when it exits."""

    name: str
    argv: list[str]
    env: dict[str, str]
    lifeline: Lifeline | None = None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    history: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=REPO, start_new_session=True, preexec_fn=die_with_parent()
        )
        if self.lifeline is not None:
            self.lifeline.watch(self.proc.pid)
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            if sig == signal.SIGKILL and self.lifeline is not None:
                self.lifeline.release(self.proc.pid)

    def restart_pause(self) -> float:
        """0 s after a long healthy run; doubling (1, 2, 4 ... 30 s) while it keeps dying quickly."""
        now = time.monotonic()
        self.history = [t for t in self.history if now - t < 120] + [now]
        return 0.0 if len(self.history) <= 1 else min(MAX_RESTART_PAUSE_S, 2.0 ** (len(self.history) - 2))

    def stop(self) -> None:
        """SIGTERM to the child (graceful: gunicorn and the cluster finish what they are doing), then
        SIGKILL to its whole group after the grace period."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _log(f"the {self.name} did not stop within {STOP_GRACE_S:.0f} s; killing it")
        self.kill_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def _web_argv(args: argparse.Namespace) -> list[str]:
    if args.dev:
        return [sys.executable, str(MANAGE), "runserver", f"{args.host}:{args.port}", "--noreload"]
    return [
        str(Path(sys.executable).with_name("gunicorn")),
        "--config",
        str(GUNICORN_CONF),
        "--bind",
        f"{args.host}:{args.port}",
        "portal.config.wsgi:application",
    ]


def _write_state(
    path: Path,
    children: Sequence[Child],
    torchserve_pid: int | None,
    lifeline: Lifeline | None = None,
    torchserve_workdir: str | None = None,
) -> None:
    state = {
        "supervisor": os.getpid(),
        "lifeline": lifeline.proc.pid if lifeline else None,
        "children": {c.name: {"pid": c.pid, "restarts": c.restarts} for c in children},
        "torchserve": torchserve_pid,
        "torchserve_workdir": torchserve_workdir,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def _read_state(var_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((var_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _recorded_groups(state: dict[str, Any]) -> dict[str, int]:
    """The process groups an earlier run recorded (a child's pid is its group), by what they are."""
    groups = {name: c.get("pid") for name, c in (state.get("children") or {}).items()}
    groups["TorchServe"] = state.get("torchserve")
    return {name: int(pid) for name, pid in groups.items() if isinstance(pid, int) and pid > 1}


def _take_lock(var_dir: Path) -> IO[str]:
    """The supervisor's lock (held until it exits, however it exits: the kernel drops it)."""
    handle = open(var_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        pid = _read_state(var_dir).get("supervisor", "?")
        raise RefusedError(
            f"the portal is already running from {var_dir} (supervisor pid {pid}): stop it with Ctrl-C in its "
            "terminal or `make stop`, or give this one its own PORTAL_VAR_DIR and PORTAL_PORT"
        ) from None
    return handle


def _wait_for_watchdog(state: dict[str, Any], groups: dict[str, int]) -> None:
    """An earlier run's watchdog may be stopping its groups right now (it gives them a grace period)."""
    watchdog = state.get("lifeline")
    if not isinstance(watchdog, int) or watchdog <= 1:
        return
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and any(group_alive(g) for g in groups.values()):
        try:
            os.kill(watchdog, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def _refuse_stale(var_dir: Path) -> None:
    state = _read_state(var_dir)
    groups = _recorded_groups(state)
    _wait_for_watchdog(state, groups)
    alive = {name: pgid for name, pgid in groups.items() if group_alive(pgid)}
    if alive:
        listed = ", ".join(f"{name} (process group {pgid})" for name, pgid in alive.items())
        raise RefusedError(
            f"processes of an earlier `make run` (supervisor pid {state.get('supervisor', '?')}, gone) still run: "
            f"{listed}. Stop them with `make stop` (python -m portal.run --stop), then start again"
        )


def _port_owner(port: int) -> str:
    with contextlib.suppress(Exception):
        import psutil

        for conn in psutil.net_connections("inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                proc = psutil.Process(conn.pid)
                return f" by pid {conn.pid} ({' '.join(proc.cmdline())[:120]})"
    return ""


def _refuse_taken_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise RefusedError(
                f"port {port} on {host} is in use{_port_owner(port)}: stop what holds it (`make stop` for an "
                "earlier portal) or choose another port (PORTAL_PORT=8001 make run)"
            ) from None


def stop_running(var_dir: Path, grace_s: float = STOP_GRACE_S) -> list[str]:
    """Stops the portal that runs (or ran) from ``var_dir``: SIGTERM to a live supervisor (which stops
    its children), then whatever its records name that still runs. What it did, in words."""
    done: list[str] = []
    state = _read_state(var_dir)
    supervisor = state.get("supervisor")
    lock_held = False
    with open(var_dir / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_held = True
    if lock_held and isinstance(supervisor, int):
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + grace_s + 40  # its children's grace, then TorchServe's
        while time.monotonic() < deadline and pid_alive(supervisor):
            time.sleep(0.2)
        done.append(f"stopped the portal (supervisor pid {supervisor})")
        state = _read_state(var_dir) or state
    groups = _recorded_groups(state)
    stale = {name: pgid for name, pgid in groups.items() if group_alive(pgid)}
    if stale:
        kill_groups(set(stale.values()), grace_s)
        done.append("stopped what an earlier run left: " + ", ".join(f"{n} (group {g})" for n, g in stale.items()))
    if state.get("torchserve") and state.get("torchserve_workdir"):
        from serving.torchserve import stop

        stop(state["torchserve_workdir"])  # its key and info files
    (var_dir / STATE_FILE).unlink(missing_ok=True)
    return done


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default=os.environ.get("PORTAL_HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORTAL_PORT", "8000")))
    ap.add_argument("--model-store", type=Path, default=REPO / "model_store")
    ap.add_argument("--torchserve-workdir", type=Path, default=REPO / ".torchserve")
    ap.add_argument(
        "--torchserve-port",
        type=int,
        default=None,
        help="first of five consecutive ports (inference, management, metrics, 2x gRPC); default 8080...",
    )
    ap.add_argument(
        "--torchserve-url", default=None, help="use this running TorchServe (key from --torchserve-workdir)"
    )
    ap.add_argument("--workers", type=int, default=int(os.environ.get("PORTAL_WORKERS", "4")))
    ap.add_argument("--dev", action="store_true", help="Django's development server with DEBUG on")
    ap.add_argument("--no-demo-admin", action="store_true")
    ap.add_argument("--stop", action="store_true", help="stop the portal running from this var directory, and exit")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signalled: list[int] = []
    raising = [True]  # start-up: a signal unwinds; supervising: it only sets the flag the loop reads

    def _on_signal(signum: int, frame: Any) -> None:
        if signalled:
            return  # a second Ctrl-C while stopping: the stop goes on
        signalled.append(signum)
        if raising[0]:
            raise _Interrupted(signum)

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        return _run(args, signalled, raising)
    except _Interrupted:
        _log("stopped")
        return 0
    except RefusedError as exc:
        _log(f"not starting: {exc}")
        return 2


def _run(args: argparse.Namespace, signalled: list[int], raising: list[bool]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.config.settings")
    os.environ["DJANGO_DEBUG"] = "1" if args.dev else os.environ.get("DJANGO_DEBUG", "0")
    sys.path.insert(0, str(REPO))
    from django.conf import settings

    var_dir = Path(settings.VAR_DIR)
    var_dir.mkdir(parents=True, exist_ok=True)
    if args.stop:
        done = stop_running(var_dir)
        print("; ".join(done) if done else f"the portal was not running from {var_dir}")
        return 0
    lock = _take_lock(var_dir)
    _refuse_stale(var_dir)
    _refuse_taken_port(args.host, args.port)

    import django
    from django.core.management import call_command

    from serving.torchserve import ServeError, ServerInfo, consecutive_ports, running_group, start, status, stop

    if args.torchserve_url is None and status(args.torchserve_workdir) is None:
        starting = running_group(args.torchserve_workdir)
        if starting is not None:
            raise RefusedError(
                f"a TorchServe from {Path(args.torchserve_workdir).resolve()} is starting or stuck (process group "
                f"{starting}, no model ready yet): `make stop` stops it"
            )

    state_file = var_dir / STATE_FILE
    lifeline = Lifeline()
    children: list[Child] = []
    started: ServerInfo | None = None
    info: ServerInfo | None = None

    def record() -> None:
        ts_workdir = str(args.torchserve_workdir.resolve()) if started else None
        _write_state(state_file, children, started.pid if started else None, lifeline, ts_workdir)

    def start_torchserve() -> ServerInfo | None:
        raising[0] = True  # a stop while TorchServe loads its models interrupts the loading
        try:
            ports = consecutive_ports(args.torchserve_port) if args.torchserve_port else None
            served = start(args.model_store, workdir=args.torchserve_workdir, ports=ports, lifeline=lifeline)
            _restore_promotions(served, args.model_store)
            return served
        except ServeError as exc:
            _log(f"TorchServe did not start; uploads wait until it does.\n{exc}")
            return None
        finally:
            raising[0] = False

    def supervise() -> None:
        """Restart children that exit, and a TorchServe this command started that is gone, until a signal."""
        nonlocal started
        pending_restart: dict[str, float] = {}
        while not signalled:
            for child in children:
                code = child.exited()
                if code is None:
                    continue
                if child.name not in pending_restart:
                    child.kill_group()  # its own children (orphaned web or job processes) go with it
                    pause = child.restart_pause()
                    _log(
                        f"the {child.name} (pid {child.pid}) exited with {code}; "
                        f"restarting it{f' in {pause:.0f} s' if pause else ''}"
                    )
                    pending_restart[child.name] = time.monotonic() + pause
                if time.monotonic() >= pending_restart[child.name] and not signalled:
                    del pending_restart[child.name]
                    child.restarts += 1
                    child.start()
                    _log(f"the {child.name} is running again (pid {child.pid}, restart {child.restarts})")
                    record()
            if started is not None and status(started.workdir) is None and not signalled:
                _log(f"TorchServe (pid {started.pid}) is gone; starting it again (jobs wait meanwhile) ...")
                stop(info=started)  # clears what is left of it (its key file, stray workers)
                lifeline.release(started.pid)
                started = None
                record()
                started = start_torchserve()
                if started is not None:
                    _log(f"TorchServe is running again (pid {started.pid})")
                    record()
            time.sleep(0.5)

    try:
        record()
        django.setup()
        _log("migrating the database ...")
        call_command("migrate", interactive=False, verbosity=0)
        login_text = io.StringIO()
        if not args.no_demo_admin:
            call_command("ensure_demo_admin", stdout=login_text)
        models = sorted(p.stem for p in args.model_store.glob("*.mar"))
        if args.torchserve_url:
            ts_url = args.torchserve_url.rstrip("/")
            _log(f"using TorchServe at {ts_url}")
        else:
            info = status(args.torchserve_workdir)
            if info is not None:
                _log(f"reusing TorchServe pid {info.pid} at {info.inference_url}")
            elif models:
                _log(f"starting TorchServe with {', '.join(models)} ...")
                info = started = start_torchserve()
                record()
            else:
                _log(f"no .mar archives in {args.model_store}; uploads wait until a model server answers.")
            ts_url = info.inference_url if info else f"http://127.0.0.1:{args.torchserve_port or 8080}"

        env = dict(os.environ, PYTHONPATH=str(REPO), TORCHSERVE_URL=ts_url)
        env["TORCHSERVE_WORKDIR"] = str(Path(info.workdir if info else args.torchserve_workdir).resolve())
        env["PORTAL_WORKERS"] = str(args.workers)
        for child in (
            Child("web server", _web_argv(args), env, lifeline),
            Child("job workers", [sys.executable, str(MANAGE), "qcluster"], env, lifeline),
        ):
            children.append(child)
            child.start()
            record()
        _banner(args, settings, login_text.getvalue().strip(), info, ts_url)
        raising[0] = False
        supervise()
    finally:
        raising[0] = False
        signalled.append(0)  # no signal interrupts the stop from here on
        _log("stopping ...")
        for child in children:
            child.stop()
        if started is not None:
            stop(info=started)
            lifeline.release(started.pid)
            _log("TorchServe stopped")
        lifeline.close()  # the watchdog kills whatever is still registered (nothing, normally)
        state_file.unlink(missing_ok=True)
        lock.close()
    return 0


def _banner(args: argparse.Namespace, settings: Any, login: str, info: Any, ts_url: str) -> None:
    url = f"http://{args.host}:{args.port}/"
    db = settings.DATABASES["default"]
    print("", flush=True)
    print("=" * 72)
    print(f"  Leukemia portal:  {url}{'   (development server, DEBUG on)' if args.dev else ''}")
    if login:
        print(f"  Log in:           {login}")
    print(f"  Models:           {', '.join(info.models) + ' at ' + info.inference_url if info else ts_url}")
    print(f"  Database:         {db['ENGINE'].rsplit('.', 1)[-1]} {db['NAME']}")
    print(f"  Job workers:      {args.workers} (django-q2 cluster; more: PORTAL_WORKERS=8 or more hosts)")
    print(f"  API docs:         {url}api/docs/   Admin: {url}admin/   Health: {url}healthz {url}readyz")
    print("  Stop with Ctrl-C (or `make stop` from another terminal).")
    print("=" * 72, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
