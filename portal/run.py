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
never a reason to stop the others. Ctrl-C (or SIGTERM) stops everything this command started.
Each child runs in its own process group, so a killed child's own children (gunicorn's workers, the
cluster's worker processes) are cleaned up before it is restarted. The pids are written to
``<var>/run.json`` for operators and tests.

Why a small supervisor of our own: it is one Python process with no configuration files (supervisord
or honcho would need a generated config and a second tool to learn), and the children it watches are
themselves supervisors (gunicorn restarts its web processes, the cluster restarts its worker
processes, TorchServe restarts its model workers); it restarts those three and starts TorchServe
through serving.torchserve, which waits for the models to be ready.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MANAGE = REPO / "portal" / "manage.py"
GUNICORN_CONF = REPO / "portal" / "gunicorn.conf.py"
STOP_GRACE_S = 20.0
MAX_RESTART_PAUSE_S = 30.0

__all__ = ["Child", "main"]


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


@dataclass
class Child:
    """One supervised command: started in its own process group, restarted when it exits."""

    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    history: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=REPO, start_new_session=True)
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


def _write_state(path: Path, children: Sequence[Child], torchserve_pid: int | None) -> None:
    state = {
        "supervisor": os.getpid(),
        "children": {c.name: {"pid": c.pid, "restarts": c.restarts} for c in children},
        "torchserve": torchserve_pid,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
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
    args = ap.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.config.settings")
    os.environ["DJANGO_DEBUG"] = "1" if args.dev else os.environ.get("DJANGO_DEBUG", "0")
    sys.path.insert(0, str(REPO))
    import django
    from django.core.management import call_command

    from serving.torchserve import ServeError, ServerInfo, consecutive_ports, start, status, stop

    django.setup()
    from django.conf import settings

    _log("migrating the database ...")
    call_command("migrate", interactive=False, verbosity=0)
    login_text = io.StringIO()
    if not args.no_demo_admin:
        call_command("ensure_demo_admin", stdout=login_text)
    var_dir = Path(settings.VAR_DIR)
    var_dir.mkdir(parents=True, exist_ok=True)

    started: ServerInfo | None = None
    info: ServerInfo | None = None
    models = sorted(p.stem for p in args.model_store.glob("*.mar"))

    def start_torchserve() -> ServerInfo | None:
        try:
            ports = consecutive_ports(args.torchserve_port) if args.torchserve_port else None
            served = start(args.model_store, workdir=args.torchserve_workdir, ports=ports)
            _restore_promotions(served, args.model_store)
            return served
        except ServeError as exc:
            _log(f"TorchServe did not start; uploads wait until it does.\n{exc}")
            return None

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
        else:
            _log(f"no .mar archives in {args.model_store}; uploads wait until a model server answers.")
        ts_url = info.inference_url if info else f"http://127.0.0.1:{args.torchserve_port or 8080}"

    env = dict(os.environ, PYTHONPATH=str(REPO), TORCHSERVE_URL=ts_url)
    env["TORCHSERVE_WORKDIR"] = str(Path(info.workdir if info else args.torchserve_workdir).resolve())
    env["PORTAL_WORKERS"] = str(args.workers)
    children = [
        Child("web server", _web_argv(args), env),
        Child("job workers", [sys.executable, str(MANAGE), "qcluster"], env),
    ]
    for child in children:
        child.start()
    state_file = var_dir / "run.json"
    _write_state(state_file, children, started.pid if started else None)

    url = f"http://{args.host}:{args.port}/"
    db = settings.DATABASES["default"]
    print("", flush=True)
    print("=" * 72)
    print(f"  Leukemia portal:  {url}{'   (development server, DEBUG on)' if args.dev else ''}")
    if login_text.getvalue().strip():
        print(f"  Log in:           {login_text.getvalue().strip()}")
    print(f"  Models:           {', '.join(info.models) + ' at ' + info.inference_url if info else ts_url}")
    print(f"  Database:         {db['ENGINE'].rsplit('.', 1)[-1]} {db['NAME']}")
    print(f"  Job workers:      {args.workers} (django-q2 cluster; more: PORTAL_WORKERS=8 or more hosts)")
    print(f"  API docs:         {url}api/docs/   Admin: {url}admin/   Health: {url}healthz {url}readyz")
    print("  Stop with Ctrl-C.")
    print("=" * 72, flush=True)

    stopping = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    pending_restart: dict[str, float] = {}
    try:
        while not stopping:
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
                if time.monotonic() >= pending_restart[child.name]:
                    del pending_restart[child.name]
                    child.restarts += 1
                    child.start()
                    _log(f"the {child.name} is running again (pid {child.pid}, restart {child.restarts})")
                    _write_state(state_file, children, started.pid if started else None)
            if started is not None and status(started.workdir) is None and not stopping:
                _log(f"TorchServe (pid {started.pid}) is gone; starting it again (jobs wait meanwhile) ...")
                stop(info=started)  # clears what is left of it (its key file, stray workers)
                restarted = start_torchserve()
                if restarted is not None:
                    started = info = restarted
                    _log(f"TorchServe is running again (pid {started.pid})")
                    _write_state(state_file, children, started.pid)
            time.sleep(0.5)
    finally:
        _log("stopping ...")
        for child in children:
            child.stop()
        if started is not None:
            stop(info=started)
            _log("TorchServe stopped")
        state_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
