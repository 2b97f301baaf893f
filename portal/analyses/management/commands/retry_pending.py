"""Run pending analyses (and failed ones with attempts left) against TorchServe; optionally forever."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from portal import actions


class Command(BaseCommand):
    help = "Retry pending analyses (TorchServe was unreachable) and failed ones with attempts left."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--loop", action="store_true", help="keep retrying every --interval seconds")
        parser.add_argument("--interval", type=float, default=10.0)
        parser.add_argument("--limit", type=int, default=None, help="at most this many per round")

    def handle(self, *args: Any, loop: bool, interval: float, limit: int | None, **options: Any) -> None:
        while True:
            if loop:  # a long-running loop must not keep a dead or stale connection between rounds
                close_old_connections()
            counts = actions.retry_pending(limit=limit)
            if counts or not loop:
                summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "nothing to do"
                self.stdout.write(f"retry_pending: {summary}")
            if not loop:
                return
            time.sleep(interval)
