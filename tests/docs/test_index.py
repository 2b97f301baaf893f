"""docs/README.md is the map of docs/: every page there is linked from it, and every link resolves."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
LINK = re.compile(r"\]\(([^)#]+)\)")


def _links() -> set[str]:
    return set(LINK.findall((DOCS / "README.md").read_text(encoding="utf-8")))


def test_every_page_in_docs_is_on_the_map() -> None:
    pages = {p.name for p in DOCS.glob("*.md") if p.name != "README.md"}
    pages |= {f"{d.name}/README.md" for d in DOCS.iterdir() if d.is_dir() and (d / "README.md").is_file()}
    missing = sorted(pages - _links())
    assert not missing, f"docs/README.md does not link {missing}"


def test_every_link_on_the_map_resolves() -> None:
    broken = sorted(link for link in _links() if not (DOCS / link).resolve().exists())
    assert not broken, f"docs/README.md links pages that do not exist: {broken}"
