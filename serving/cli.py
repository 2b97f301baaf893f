"""``make serve`` / ``make stop``: start a local TorchServe on the model store (the promoted versions made
the default again, :mod:`serving.versions`) or stop it. ``python -m serving.cli start|stop --help``.

The command line lives apart from :mod:`serving.torchserve` so that the server's start and stop stay
below :mod:`serving.versions`, which uses them.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import requests

from serving.lifeline import pid_alive
from serving.torchserve import (
    DEFAULT_CONFIG,
    DEFAULT_WORKDIR,
    READY_TIMEOUT_S,
    REPO,
    ServeError,
    ServerInfo,
    start,
    stop,
)
from serving.versions import PromotionError, restore

__all__ = ["main"]


def _wait_foreground(info: ServerInfo) -> int:
    """Block while TorchServe runs (container entry point); SIGTERM/SIGINT stop it cleanly."""
    stopping = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    while not stopping and pid_alive(info.pid):
        time.sleep(1.0)
    stop(info=info)
    return 0 if stopping else 1


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Start/stop a local TorchServe for the leukemia models.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("--model-store", type=Path, default=REPO / "model_store")
    s.add_argument("--models", nargs="*")
    s.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    s.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    s.add_argument("--timeout", type=float, default=READY_TIMEOUT_S)
    s.add_argument("--foreground", action="store_true", help="stay attached; stop TorchServe on SIGTERM/SIGINT")
    p = sub.add_parser("stop")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = ap.parse_args(argv)
    if args.cmd == "start":
        try:
            info = start(args.model_store, args.models, args.workdir, args.config, timeout_s=args.timeout)
        except ServeError as exc:
            print(f"TorchServe did not start: {exc}", file=sys.stderr)
            return 1
        try:  # the promoted defaults (make promote / rollback)
            for switched in restore(info, args.model_store):
                print(f"promoted version restored: {switched}")
        except (PromotionError, OSError, ValueError, requests.RequestException) as exc:
            print(f"promoted versions not restored, the shipped versions serve: {exc}", file=sys.stderr)
        print(f"TorchServe ready in {info.ready_s:.1f} s: {', '.join(info.models)}")
        print(f"  inference  {info.inference_url}   (Authorization: Bearer <inference key>)")
        print(f"  management {info.management_url}   metrics {info.metrics_url}/metrics")
        print(f"  keys       {info.key_file}   pid {info.pid}   logs {Path(info.workdir) / 'logs'}", flush=True)
        if args.foreground:
            return _wait_foreground(info)
        return 0
    print("TorchServe stopped" if stop(args.workdir) else "TorchServe was not running")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
