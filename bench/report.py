"""What every benchmark report starts with and how it is written (bench.ts_overhead, bench.kserve_overhead)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from core.host import cpu_model

__all__ = ["run_header", "write_report"]


def run_header(command: str) -> dict[str, Any]:
    """When and where a run was measured, and the command that measured it."""
    return {"when": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(), "cores": os.cpu_count(), "command": command}


def write_report(out: Path, report: dict[str, Any], markdown: str) -> None:
    """``<out>.json`` (the results) and ``<out>.md`` (rendered from them)."""
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(f"wrote {out}.json and {out}.md")
