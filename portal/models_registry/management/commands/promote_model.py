"""``make promote MODEL=<name> VERSION=<v>``: make a gated version the default (portal.models_registry.switch)."""

from __future__ import annotations

import getpass
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from portal.models_registry.switch import PromotionError, promote


class Command(BaseCommand):
    help = "Promote a model version with a passed gate report to the served default (audited)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--model", required=True)
        parser.add_argument("--model-version", required=True, help="the gated version to make the default")
        parser.add_argument("--by", default="", help="who promotes (default: the login name)")

    def handle(self, *args: Any, model: str, model_version: str, by: str, **options: Any) -> None:
        try:
            entry = promote(model, model_version, by or getpass.getuser())
        except (PromotionError, OSError) as exc:
            raise CommandError(f"promotion refused: {exc}") from exc
        self.stdout.write(
            f"{model}: {entry['from']} -> {entry['to']} ({entry['torchserve']}; report {entry['report']})"
            + (f"; unloaded {', '.join(entry['unloaded'])}" if entry.get("unloaded") else "")
            + (f"; not unloaded: {entry['unloaded_error']}" if entry.get("unloaded_error") else "")
        )
