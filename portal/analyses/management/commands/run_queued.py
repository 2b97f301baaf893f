"""Run the queued analysis jobs in this process until the queue is empty (no cluster needed)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from portal import jobs


class Command(BaseCommand):
    help = (
        "Run queued analysis jobs in this process, then exit: a one-off catch-up without "
        "`manage.py qcluster` (which is what `make run` and the worker containers run)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--max-jobs", type=int, default=None)
        parser.add_argument("--sweep", action="store_true", help="first re-queue pending analyses without a job")

    def handle(self, *args: Any, max_jobs: int | None, sweep: bool, **options: Any) -> None:
        if sweep:
            self.stdout.write(f"sweep: {jobs.sweep()}")
        counts = jobs.run_queued(max_jobs=max_jobs)
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "nothing queued"
        self.stdout.write(f"run_queued: {summary}")
