"""``make dataset``: the lab's confirmed data from sign-offs as a versioned, de-identified dataset
(portal.models_registry.dataset). Prints the dataset's id, path and counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from portal.audit.log import record
from portal.models_registry.dataset import DEFAULT_TEST_FRACTION, DatasetError, export
from serving.torchserve import REPO

DEFAULT_OUT = REPO / "var" / "datasets"


class Command(BaseCommand):
    help = "Export the signed-off images and cells as a de-identified dataset (files by content hash, manifest)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
        parser.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION)

    def handle(self, *args: Any, out: Path, test_fraction: float, **options: Any) -> None:
        if not 0.0 <= test_fraction < 1.0:
            raise CommandError("--test-fraction must be in [0, 1)")
        try:
            manifest = export(out, test_fraction)
        except DatasetError as exc:
            raise CommandError(str(exc)) from exc
        record(
            "dataset.export",
            object_type="dataset",
            object_id=manifest["dataset"],
            object_repr=manifest["dataset"],
            data={"counts": manifest["counts"], "path": manifest["path"]},
        )
        c = manifest["counts"]
        self.stdout.write(
            f"{manifest['dataset']} at {manifest['path']}: train {c['train']['images']} images / "
            f"{c['train']['cells']} cells, test {c['test']['images']} images / {c['test']['cells']} cells "
            f"({manifest['specimens']['train']} + {manifest['specimens']['test']} specimens)"
        )
