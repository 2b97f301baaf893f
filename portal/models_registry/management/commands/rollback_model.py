"""``make rollback MODEL=<name>``: back to the previous default in one step (portal.models_registry.switch)."""

from __future__ import annotations

import getpass
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from portal.models_registry.switch import PromotionError, rollback


class Command(BaseCommand):
    help = "Roll a model back to the default version before the current one (audited)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--model", required=True)
        parser.add_argument("--by", default="", help="who rolls back (default: the login name)")

    def handle(self, *args: Any, model: str, by: str, **options: Any) -> None:
        try:
            entry = rollback(model, by or getpass.getuser())
        except (PromotionError, OSError) as exc:
            raise CommandError(f"rollback refused: {exc}") from exc
        self.stdout.write(
            f"{model}: {entry['from']} -> {entry['to']} ({entry['torchserve']}; report {entry['report']})"
            + (f"; unloaded {', '.join(entry['unloaded'])}" if entry.get("unloaded") else "")
            + (f"; not unloaded: {entry['unloaded_error']}" if entry.get("unloaded_error") else "")
        )
