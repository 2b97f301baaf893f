"""Do the uploaded files and the database agree? Counts per status and stage, queued jobs, and every
image or heatmap row without its file and every stored file without a row. Exit status 1 when they
disagree (for cron and the reliability tests)."""

from __future__ import annotations

import json as jsonlib
from typing import Any

from django.core.management.base import BaseCommand
from django.db.models import Count

from portal import jobs
from portal.analyses import storage
from portal.analyses.models import Analysis, Image


class Command(BaseCommand):
    help = "Check that stored files and database rows agree; report analyses per status and stage."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument(
            "--sweep-older-than",
            type=float,
            default=None,
            metavar="SECONDS",
            help="first run the sweep (portal.jobs.sweep): re-queue orphaned analyses, remove files no row "
            "references that are older than SECONDS (0 only on a quiet system)",
        )

    def handle(self, *args: Any, json: bool = False, sweep_older_than: float | None = None, **options: Any) -> None:
        swept = jobs.sweep(orphan_grace_s=sweep_older_than) if sweep_older_than is not None else {}
        on_disk = {name for name, _ in storage.list_files()}
        image_names = set(Image.objects.values_list("storage_name", flat=True))
        heatmap_names = set(Analysis.objects.exclude(heatmap_name="").values_list("heatmap_name", flat=True))
        report = {
            "images": len(image_names),
            "analyses": dict(Analysis.objects.values_list("status").annotate(n=Count("id")).order_by()),
            "pending_stages": dict(
                Analysis.objects.filter(status="pending").values_list("stage").annotate(n=Count("id")).order_by()
            ),
            "done_without_heatmap": Analysis.objects.filter(status="done", heatmap_name="").count(),
            "queued_jobs": len(jobs.queued_analysis_ids()),
            "rows_without_file": sorted((image_names | heatmap_names) - on_disk),
            "files_without_row": sorted(on_disk - image_names - heatmap_names),
            "swept": swept,
        }
        report["consistent"] = not report["rows_without_file"] and not report["files_without_row"]
        if json:
            self.stdout.write(_dumps(report))
        else:
            for key, value in report.items():
                self.stdout.write(f"{key}: {value}")
        if not report["consistent"]:
            raise SystemExit(1)


def _dumps(obj: Any) -> str:
    return jsonlib.dumps(obj, sort_keys=True)
