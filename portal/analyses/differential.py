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

- **Blasts** are white cells (in the denominator). Their percentage is reported with its 95% confidence
  interval and against :data:`BLAST_THRESHOLD_PERCENT`, the line that defines acute leukaemia.

Every page, export and the API read this one computation (portal.analyses.cell_review, reports, fhir,
api), so they cannot disagree. Type names and descriptions come from the registry; the blast line, the
target counts and the interval's confidence are defined here once.

**The 95% interval is the Wilson score interval** (Wilson 1927), not the Rümke table that many labs print
(Rümke 1979: exact binomial limits for 100, 200, 500 and 1000 cells). Wilson's limits exist for any count
of any number of cells, never leave 0-100%, and at 100 and 200 cells lie within 0.7 and 0.4 percentage
points of the exact (Clopper-Pearson) limits for every count (tests/portal/test_specimen_conclusion.py
checks this against scipy). A percentage from 100 cells is uncertain: 20 blasts in 100 white cells is 20%
with an interval of 13.3-28.9%, which is why the page says when the interval still crosses the blast line
and why labs count 200 cells then.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from math import sqrt
from statistics import NormalDist
from typing import Literal, Protocol

from core.cell_answer import ARTEFACT, UNCLASSIFIED, count_cells
from core.registry import CELL_CLASSES, CELL_DESCRIPTIONS, LEUKOCYTE_CLASSES

__all__ = [
    "ARTEFACT",
    "BLAST",
    "BLAST_THRESHOLD_PERCENT",
    "CATEGORIES",
    "CONFIDENCE",
    "DEFAULT_TARGET_COUNT",
    "NRBC",
    "PLATELET",
    "REVIEW_LABELS",
    "TARGET_COUNTS",
    "UNCLASSIFIED",
    "WHITE_CATEGORIES",
    "CountProgress",
    "Differential",
    "DifferentialRow",
    "count_progress",
    "describe",
    "differential",
    "wilson_interval",
]

#: Nucleated red cells and platelets: the registry's cell types that are not white cells.
NRBC, PLATELET = (c for c in CELL_CLASSES if c not in LEUKOCYTE_CLASSES)
assert (NRBC, PLATELET) == ("erythroblast", "platelet"), "core.registry changed its non-white cell types"
#: Blasts: a white-cell type of the registry, so in the denominator like every other white cell.
BLAST = "blast"
assert BLAST in LEUKOCYTE_CLASSES, "core.registry lost the blast type"

#: The blast line, in percent of the white cells counted. The WHO classification of haematolymphoid tumours
#: (4th edition revised 2017, kept in the 5th edition 2022 for the acute leukaemias that are not defined by
#: a genetic abnormality) and the International Consensus Classification (ICC 2022) define acute leukaemia by
#: blasts making up at least 20% of the white cells of the peripheral blood or of the nucleated cells of the
#: marrow. At or over it the portal flags the specimen; under it nothing is excluded (both classifications
#: accept fewer blasts with some genetic abnormalities, and a smear is not a marrow): a flag for the
#: reviewer, not a diagnosis.
BLAST_THRESHOLD_PERCENT = 20.0
#: The white cells a lab counts per specimen before it reports a differential: 100 is the classic manual
#: differential, 200 halves the uncertainty's width by about a third and is what labs choose when blasts
#: are near the line (settings.PORTAL_DIFFERENTIAL_TARGET picks one).
TARGET_COUNTS: tuple[int, ...] = (100, 200)
DEFAULT_TARGET_COUNT = TARGET_COUNTS[0]
#: The confidence of every interval reported with a percentage.
CONFIDENCE = 0.95

#: The denominator of the percentages: the white-cell types, then the white cells nobody typed.
WHITE_CATEGORIES: tuple[str, ...] = (*LEUKOCYTE_CLASSES, UNCLASSIFIED)
#: Every row of the differential, in report order: white cells, NRBC, platelets, then the excluded artefacts.
CATEGORIES: tuple[str, ...] = (*WHITE_CATEGORIES, NRBC, PLATELET, ARTEFACT)
#: What a technologist may set a cell to: any type the model knows, or "not a cell" (the model never says so).
REVIEW_LABELS: tuple[str, ...] = (*CELL_CLASSES, ARTEFACT)

Group = Literal["white", "nrbc", "platelet", "excluded"]
_EXTRA_DESCRIPTIONS = {UNCLASSIFIED: "Unclassified", ARTEFACT: "Artefact (not a cell)"}


class _Typed(Protocol):
    reviewed_label: str | None  # a cell added by hand (``manual``, read with getattr) has its type here

    @property
    def final_label(self) -> str: ...


def describe(category: str) -> str:
    """A person's name for a category (the registry's description; "Unclassified"; "Artefact (not a cell)")."""
    return CELL_DESCRIPTIONS.get(category) or _EXTRA_DESCRIPTIONS.get(category, category.capitalize())


def _group(category: str) -> Group:
    if category in WHITE_CATEGORIES:
        return "white"
    return {NRBC: "nrbc", PLATELET: "platelet"}.get(category, "excluded")  # type: ignore[return-value]


def wilson_interval(count: int, total: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of ``count`` out of ``total``, in percent; None when ``total`` is 0.

    With z the normal quantile of (1 + confidence) / 2 and p = count / total:
    centre = (p + z²/2n) / (1 + z²/n), half-width = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n).
    """
    if total <= 0:
        return None
    if not 0 <= count <= total:
        raise ValueError(f"{count} of {total}")
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    p, z2 = count / total, z * z
    denominator = 1 + z2 / total
    centre = (p + z2 / (2 * total)) / denominator
    half = z * sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / denominator
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


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
    #: the percentage's 95% Wilson interval (white rows with at least one white cell counted; else None)
    interval: tuple[float, float] | None = None

    @property
    def is_blast(self) -> bool:
        return self.category == BLAST


@dataclass(frozen=True)
class CountProgress:
    """How far the specimen's count is towards the lab's target number of white cells."""

    counted: int
    target: int

    @property
    def reached(self) -> bool:
        return self.counted >= self.target

    @property
    def remaining(self) -> int:
        return max(0, self.target - self.counted)

    @property
    def percent(self) -> float:
        """0-100 (capped): for a progress bar."""
        return min(100.0, 100.0 * self.counted / self.target)

    @property
    def text(self) -> str:
        if self.reached:
            return f"{self.counted} white cells counted: the target of {self.target} is reached"
        return f"{self.counted} of {self.target} white cells counted: {self.remaining} more to reach the target"


def count_progress(white_cells: int, target: int = DEFAULT_TARGET_COUNT) -> CountProgress:
    """The count's progress towards ``target`` (one of :data:`TARGET_COUNTS`)."""
    if target not in TARGET_COUNTS:
        raise ValueError(f"target count {target} is not one of {TARGET_COUNTS}")
    return CountProgress(white_cells, target)


@dataclass(frozen=True)
class Differential:
    rows: tuple[DifferentialRow, ...]
    white_cells: int  # the denominator: typed white cells + unclassified
    reviewed: int  # detections a technologist reclassified (artefacts included; cells added by hand apart)
    excluded: int  # detections a technologist marked as artefacts
    added: int = 0  # cells a technologist added by hand (the model missed them); counted under their type

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

    @property
    def blasts(self) -> DifferentialRow:
        return self.row(BLAST)

    @property
    def blast_percent(self) -> float | None:
        """Blasts in percent of the white cells; None when no white cell was counted."""
        return self.blasts.percent if self.white_cells else None

    @property
    def blasts_over_threshold(self) -> bool:
        """The blast percentage is at or over the acute-leukaemia line (:data:`BLAST_THRESHOLD_PERCENT`)."""
        return self.blast_percent is not None and self.blast_percent >= BLAST_THRESHOLD_PERCENT

    @property
    def blast_interval_crosses_threshold(self) -> bool:
        """The blasts' 95% interval contains the line: this count cannot tell which side the specimen is on."""
        interval = self.blasts.interval
        return interval is not None and interval[0] < BLAST_THRESHOLD_PERCENT <= interval[1]

    @property
    def blast_text(self) -> str:
        """One line on the blasts, as the pages, the PDF and the conclusion say it."""
        interval = self.blasts.interval
        if self.blast_percent is None or interval is None:
            return "Blasts: no white cell counted yet"
        low, high = interval
        where = (
            f"at or over the {BLAST_THRESHOLD_PERCENT:g}% line that defines acute leukaemia"
            if self.blasts_over_threshold
            else f"under the {BLAST_THRESHOLD_PERCENT:g}% line"
        )
        crosses = "; the 95% interval still crosses the line" if self.blast_interval_crosses_threshold else ""
        return (
            f"Blasts {self.blasts.count} of {self.white_cells} white cells: {self.blast_percent:.1f}% "
            f"(95% CI {low:.1f}-{high:.1f}%), {where}{crosses}"
        )

    def as_dict(self) -> dict[str, object]:
        """For the API, the audit trail and the exports (percentages rounded to 0.1, as reported)."""
        nrbc = self.nrbc_per_100_wbc
        blast = self.blast_percent
        interval = self.blasts.interval
        return {
            "white_cells": self.white_cells,
            "reviewed": self.reviewed,
            "excluded": self.excluded,
            "added": self.added,
            "counts": {r.category: r.count for r in self.rows},
            "percent_of_white_cells": {r.category: round(r.percent or 0.0, 1) for r in self.white_rows},
            "interval_95_of_white_cells": {
                r.category: None if r.interval is None else [round(r.interval[0], 1), round(r.interval[1], 1)]
                for r in self.white_rows
            },
            "nrbc_per_100_wbc": None if nrbc is None else round(nrbc, 1),
            "blast_percent": None if blast is None else round(blast, 1),
            "blast_interval_95": None if interval is None else [round(interval[0], 1), round(interval[1], 1)],
            "blast_threshold_percent": BLAST_THRESHOLD_PERCENT,
            "blasts_over_threshold": self.blasts_over_threshold,
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
        interval = wilson_interval(n, white) if group == "white" else None
        return DifferentialRow(category, describe(category), n, group, percent, per_100, interval)

    return Differential(
        rows=tuple(row(c) for c in CATEGORIES),
        white_cells=white,
        reviewed=sum(1 for c in cells if c.reviewed_label and not getattr(c, "manual", False)),
        excluded=counts[ARTEFACT],
        added=sum(1 for c in cells if getattr(c, "manual", False)),
    )
