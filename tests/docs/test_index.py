"""docs/README.md is the map of docs/: every page under it is linked from it, and every link in docs/ resolves."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
LINK = re.compile(r"\]\(([^)#]+)\)")


def _links() -> set[str]:
    return set(LINK.findall((DOCS / "README.md").read_text(encoding="utf-8")))


def test_every_page_in_docs_is_on_the_map() -> None:
    """Every Markdown page under docs/ (guides/, results/, and a folder's README for its figures)."""
    pages = set()
    for p in DOCS.rglob("*.md"):
        rel = p.relative_to(DOCS)
        if rel.name == "README.md" and rel.parent == Path("."):
            continue
        # a folder with its own README (docs/models/) is on the map through that README
        owner = next((d for d in rel.parents if d != Path(".") and (DOCS / d / "README.md").is_file()), None)
        pages.add(str(rel) if owner is None or rel.name == "README.md" else f"{owner}/README.md")
    missing = sorted(pages - _links())
    assert not missing, f"docs/README.md does not link {missing}"


def test_every_relative_link_in_docs_resolves() -> None:
    """Links between pages (guides to results and back) still resolve after a page moves."""
    broken = []
    for page in DOCS.rglob("*.md"):
        for link in LINK.findall(page.read_text(encoding="utf-8")):
            if not link.startswith(("http://", "https://", "mailto:")) and not (page.parent / link).exists():
                broken.append(f"{page.relative_to(DOCS)}: {link}")
    assert not broken, f"broken links: {broken}"


def test_every_link_on_the_map_resolves() -> None:
    broken = sorted(link for link in _links() if not (DOCS / link).resolve().exists())
    assert not broken, f"docs/README.md links pages that do not exist: {broken}"
