"""What every benchmark report starts with, its tables, and how it is written (bench.ts_overhead,
bench.kserve_overhead, bench.gate_side)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from core.host import cpu_model

__all__ = ["markdown_table", "run_header", "write_report"]


def run_header(command: str) -> dict[str, Any]:
    """When and where a run was measured, and the command that measured it."""
    return {"when": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(), "cores": os.cpu_count(), "command": command}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines: the header, its rule, then one line per row (cells as ``str`` gives them)."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


def write_report(out: Path, report: dict[str, Any], markdown: str) -> None:
    """``<out>.json`` (the results) and ``<out>.md`` (rendered from them)."""
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(f"wrote {out}.json and {out}.md")
