"""`make run`: TorchServe with the four models, then the portal, plus the automatic retry loop.

Steps: migrate the database (SQLite in var/portal/ unless DATABASE_URL says otherwise), create the
demo admin on first run, start TorchServe through handlers.serve (or reuse the one already running
from the same working directory), start the portal (Django's server) and the retry loop
(`manage.py retry_pending --loop`), print the URL and how to log in, and stop everything on Ctrl-C.
Without archives in the model store the portal still runs: uploads wait as pending until a
TorchServe is up, and the retry loop completes them.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANAGE = REPO / "portal" / "manage.py"

__all__ = ["main"]


def _ports(base: int | None) -> dict[str, int] | None:
    if base is None:
        return None
    names = ["inference", "management", "metrics", "grpc_inference", "grpc_management"]
    return {name: base + i for i, name in enumerate(names)}


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
    ap.add_argument("--retry-interval", type=float, default=10.0)
    args = ap.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.config.settings")
    sys.path.insert(0, str(REPO))
    import django
    from django.core.management import call_command

    from handlers.serve import ServeError, start, status, stop

    django.setup()
    from django.conf import settings

    print("portal: migrating the database ...", flush=True)
    call_command("migrate", interactive=False, verbosity=0)
    login_text = io.StringIO()
    call_command("ensure_demo_admin", stdout=login_text)

    started = None
    info = status(args.torchserve_workdir)
    models = sorted(p.stem for p in args.model_store.glob("*.mar"))
    if info is not None:
        print(f"portal: reusing TorchServe pid {info.pid} at {info.inference_url}", flush=True)
    elif models:
        print(f"portal: starting TorchServe with {', '.join(models)} ...", flush=True)
        try:
            info = started = start(
                args.model_store, workdir=args.torchserve_workdir, ports=_ports(args.torchserve_port)
            )
        except ServeError as exc:
            print(f"portal: TorchServe did not start; uploads will wait as pending.\n{exc}", file=sys.stderr)
    else:
        print(
            f"portal: no .mar archives in {args.model_store} (`make archive`); uploads will wait as pending.",
            file=sys.stderr,
        )

    env = dict(os.environ, PYTHONPATH=str(REPO))
    if info is not None:
        env["TORCHSERVE_URL"] = info.inference_url
        env["TORCHSERVE_WORKDIR"] = info.workdir
    elif args.torchserve_port:
        env["TORCHSERVE_URL"] = f"http://127.0.0.1:{args.torchserve_port}"
    names = ["portal server", "retry loop"]
    children = [
        subprocess.Popen([sys.executable, str(MANAGE), "runserver", f"{args.host}:{args.port}", "--noreload"], env=env),
        subprocess.Popen(
            [sys.executable, str(MANAGE), "retry_pending", "--loop", "--interval", str(args.retry_interval)], env=env
        ),
    ]
    url = f"http://{args.host}:{args.port}/"
    print("", flush=True)
    print("=" * 72)
    print(f"  Leukemia portal:  {url}")
    print(f"  Log in:           {login_text.getvalue().strip()}")
    print(f"  Models:           {', '.join(info.models) + ' at ' + info.inference_url if info else 'none running'}")
    print(
        f"  Database:         {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]} "
        f"{settings.DATABASES['default']['NAME']}"
    )
    print(f"  API docs:         {url}api/docs/   Admin: {url}admin/")
    print("  Stop with Ctrl-C.")
    print("=" * 72, flush=True)

    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    code = 0
    try:
        while not stopping:
            for name, child in zip(names, children, strict=True):
                if child.poll() is not None:
                    print(f"portal: the {name} exited with {child.returncode}", file=sys.stderr)
                    stopping, code = True, 1
            time.sleep(0.5)
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        if started is not None:
            stop(info=started)
            print("portal: TorchServe stopped", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
