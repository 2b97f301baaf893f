"""The white-cell differential of a specimen, as a haematology lab reports a manual 100-cell differential.

Each detection counts once, under its final type: the technologist's reclassification when there is one,
else the model's label; a cell the model abstained on (and nobody typed) counts as "unclassified".

- **White cells** are the registry's leukocyte types (core.registry.LEUKOCYTE_CLASSES) plus the
  unclassified cells (the cell model only lists a cell it did not type when it took it for a white
  cell). They are the denominator: their percentages add up to 100 %.
- **Erythroblasts** (nucleated red cells) are counted and reported per 100 white cells (NRBC/100 WBC),
  **platelets** as a count only; neither is in the denominator.
- **Artefacts** (a reviewer's "not a cell", core.cell_answer.ARTEFACT) are excluded from every count and
  percentage and reported as "excluded".

Every page, export and the API read this one computation (portal.analyses.cell_review, reports, fhir,
api), so they cannot disagree. Type names and descriptions come from the registry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from core.cell_answer import ARTEFACT, UNCLASSIFIED, count_cells
from core.registry import CELL_CLASSES, CELL_DESCRIPTIONS, LEUKOCYTE_CLASSES

__all__ = [
    "ARTEFACT",
    "CATEGORIES",
    "NRBC",
    "PLATELET",
    "REVIEW_LABELS",
    "UNCLASSIFIED",
    "WHITE_CATEGORIES",
    "Differential",
    "DifferentialRow",
    "describe",
    "differential",
]

#: Nucleated red cells and platelets: the registry's cell types that are not white cells.
NRBC, PLATELET = (c for c in CELL_CLASSES if c not in LEUKOCYTE_CLASSES)
assert (NRBC, PLATELET) == ("erythroblast", "platelet"), "core.registry changed its non-white cell types"
#: The denominator of the percentages: the white-cell types, then the white cells nobody typed.
WHITE_CATEGORIES: tuple[str, ...] = (*LEUKOCYTE_CLASSES, UNCLASSIFIED)
#: Every row of the differential, in report order: white cells, NRBC, platelets, then the excluded artefacts.
CATEGORIES: tuple[str, ...] = (*WHITE_CATEGORIES, NRBC, PLATELET, ARTEFACT)
#: What a technologist may set a cell to: any type the model knows, or "not a cell" (the model never says so).
REVIEW_LABELS: tuple[str, ...] = (*CELL_CLASSES, ARTEFACT)

Group = Literal["white", "nrbc", "platelet", "excluded"]
_EXTRA_DESCRIPTIONS = {UNCLASSIFIED: "Unclassified", ARTEFACT: "Artefact (not a cell)"}


class _Typed(Protocol):
    reviewed_label: str | None

    @property
    def final_label(self) -> str: ...


def describe(category: str) -> str:
    """A person's name for a category (the registry's description; "Unclassified"; "Artefact (not a cell)")."""
    return CELL_DESCRIPTIONS.get(category) or _EXTRA_DESCRIPTIONS.get(category, category.capitalize())


def _group(category: str) -> Group:
    if category in WHITE_CATEGORIES:
        return "white"
    return {NRBC: "nrbc", PLATELET: "platelet"}.get(category, "excluded")  # type: ignore[return-value]


@dataclass(frozen=True)
class DifferentialRow:
    category: str
    description: str
    count: int
    group: Group
    #: percent of the white cells (0-100; 0.0 when none were counted); None for rows outside the denominator
    percent: float | None
    #: per 100 white cells (NRBC only; None when there is no white cell to relate them to)
    per_100_wbc: float | None = None


@dataclass(frozen=True)
class Differential:
    rows: tuple[DifferentialRow, ...]
    white_cells: int  # the denominator: typed white cells + unclassified
    reviewed: int  # detections a technologist reclassified (artefacts included)
    excluded: int  # detections a technologist marked as artefacts

    def row(self, category: str) -> DifferentialRow:
        return next(r for r in self.rows if r.category == category)

    @property
    def white_rows(self) -> tuple[DifferentialRow, ...]:
        return tuple(r for r in self.rows if r.group == "white")

    @property
    def nrbc(self) -> DifferentialRow:
        return self.row(NRBC)

    @property
    def platelets(self) -> DifferentialRow:
        return self.row(PLATELET)

    @property
    def artefacts(self) -> DifferentialRow:
        return self.row(ARTEFACT)

    @property
    def nrbc_per_100_wbc(self) -> float | None:
        return self.nrbc.per_100_wbc

    @property
    def counted(self) -> int:
        """Cells counted in any row but the excluded one (white cells, NRBC, platelets)."""
        return sum(r.count for r in self.rows if r.group != "excluded")

    def as_dict(self) -> dict[str, object]:
        """For the API, the audit trail and the exports (percentages rounded to 0.1, as reported)."""
        nrbc = self.nrbc_per_100_wbc
        return {
            "white_cells": self.white_cells,
            "reviewed": self.reviewed,
            "excluded": self.excluded,
            "counts": {r.category: r.count for r in self.rows},
            "percent_of_white_cells": {r.category: round(r.percent or 0.0, 1) for r in self.white_rows},
            "nrbc_per_100_wbc": None if nrbc is None else round(nrbc, 1),
        }


def differential(cells: Iterable[_Typed]) -> Differential:
    """Count ``cells`` by final type; every category appears (zero counts included)."""
    cells = list(cells)
    # the handler's own counting rule (core.cell_answer): None is an unclassified cell; artefacts apart
    labels = (None if c.final_label == UNCLASSIFIED else c.final_label for c in cells)
    counts = count_cells(labels, REVIEW_LABELS)
    white = sum(counts[c] for c in WHITE_CATEGORIES)

    def row(category: str) -> DifferentialRow:
        n, group = counts[category], _group(category)
        percent = (100.0 * n / white if white else 0.0) if group == "white" else None
        per_100 = (100.0 * n / white if white else None) if group == "nrbc" else None
        return DifferentialRow(category, describe(category), n, group, percent, per_100)

    return Differential(
        rows=tuple(row(c) for c in CATEGORIES),
        white_cells=white,
        reviewed=sum(1 for c in cells if c.reviewed_label),
        excluded=counts[ARTEFACT],
    )
