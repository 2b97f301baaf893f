"""The white-cell differential of a specimen: counts and percentages per cell type over all its frames.

Each cell counts once, under its final type: the technologist's reclassification when there is one,
else the model's label; a cell the model abstained on (and nobody typed) counts as "unclassified".
Percentages are of all counted cells, unclassified included, so the rows always add up to 100 %.
Cell types and their names come from the registry (core.registry.CELL_CLASSES, CELL_DESCRIPTIONS).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from core.cell_answer import UNCLASSIFIED, count_cells
from core.registry import CELL_CLASSES, CELL_DESCRIPTIONS

__all__ = ["CATEGORIES", "UNCLASSIFIED", "Differential", "DifferentialRow", "describe", "differential"]

#: The differential's rows, in a fixed order: the registry's cell types, then the unclassified cells.
CATEGORIES: tuple[str, ...] = (*CELL_CLASSES, UNCLASSIFIED)


class _Typed(Protocol):
    reviewed_label: str | None

    @property
    def final_label(self) -> str: ...


def describe(category: str) -> str:
    """A person's name for a category (the registry's description; "Unclassified")."""
    return CELL_DESCRIPTIONS.get(category, category.capitalize())


@dataclass(frozen=True)
class DifferentialRow:
    category: str
    description: str
    count: int
    percent: float  # 0-100; 0.0 when no cell was counted


@dataclass(frozen=True)
class Differential:
    rows: tuple[DifferentialRow, ...]
    total: int
    reviewed: int  # cells a technologist reclassified

    def as_dict(self) -> dict[str, object]:
        """For the API and the exports: {"total", "reviewed", "counts": {type: n}, "percent": {type: %}}."""
        return {
            "total": self.total,
            "reviewed": self.reviewed,
            "counts": {r.category: r.count for r in self.rows},
            "percent": {r.category: round(r.percent, 1) for r in self.rows},
        }


def differential(cells: Iterable[_Typed]) -> Differential:
    """Count ``cells`` by final type; every category appears (zero counts included)."""
    cells = list(cells)
    # the handler's own counting rule (core.cell_answer): None is an unclassified cell
    counts = count_cells((None if c.final_label == UNCLASSIFIED else c.final_label for c in cells), CELL_CLASSES)
    reviewed = sum(1 for c in cells if c.reviewed_label)
    total = sum(counts.values())
    rows = tuple(
        DifferentialRow(
            category=cat,
            description=describe(cat),
            count=counts.get(cat, 0),
            percent=100.0 * counts.get(cat, 0) / total if total else 0.0,
        )
        for cat in CATEGORIES
    )
    return Differential(rows=rows, total=total, reviewed=reviewed)
