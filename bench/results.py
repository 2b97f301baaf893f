"""The generated result pages (docs/results/): each page, the record it is rendered from, and how.

``python -m bench.results`` renders every page again from its committed record (no measurement), so a
change to a report's template is seen as a diff of the pages; tests/bench checks that the committed pages
are what their records render to.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import RESULTS

__all__ = ["PAGES", "render_page"]


def _benchmarks(r: dict[str, Any]) -> str:
    from bench.serving_report import render_markdown

    return render_markdown(r, "benchmarks_latency.png")


def _cells(r: dict[str, Any]) -> str:
    from bench.cells import render_markdown

    return render_markdown(r, "benchmarks_cells_latency.png")


def _scale(png: str) -> Callable[[dict[str, Any]], str]:
    def render(r: dict[str, Any]) -> str:
        from bench.scale_report import render

        return render(r["runs"], r["meta"], png)

    return render


def _module_render(module: str) -> Callable[[dict[str, Any]], str]:
    def render(r: dict[str, Any]) -> str:
        import importlib

        return str(importlib.import_module(module).render(r))

    return render


#: page (docs/results/<name>.md) -> its renderer, from the record docs/results/<name>.json
PAGES: dict[str, Callable[[dict[str, Any]], str]] = {
    "benchmarks": _benchmarks,
    "benchmarks_cells": _cells,
    "gate_side": _module_render("bench.gate_side"),
    "kserve_overhead": _module_render("bench.kserve_overhead"),
    "portal_latency": _module_render("bench.portal_latency"),
    "reliability": _module_render("bench.load"),
    "scale": _scale("scale.png"),
    "scale_repeat": _scale("scale_repeat.png"),
    # not a benchmark: the specimen conclusion's checks on served cell counts (evaluation/, not bench/)
    "specimen_checks": _module_render("evaluation.specimen_checks"),
    "torchserve_config": _module_render("bench.ts_config"),
    "ts_overhead": _module_render("bench.ts_overhead"),
}


def render_page(name: str, results: Path = RESULTS) -> str:
    """The Markdown of ``name`` rendered from its committed record."""
    return PAGES[name](json.loads((results / f"{name}.json").read_text()))


def main(argv: list[str] | None = None) -> int:
    names = (sys.argv[1:] if argv is None else argv) or list(PAGES)
    for name in names:
        (RESULTS / f"{name}.md").write_text(render_page(name))
        print(f"rendered docs/results/{name}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
