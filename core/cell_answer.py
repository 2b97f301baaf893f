"""The cell-level answer (``/predictions/wbc_cells``): one entry per cell found, and the counts.

Torch-free, so the portal reads answers with the same names the handler writes them with. A cell
whose top calibrated probability is under the card's ``abstain_threshold`` keeps its probabilities
but gets ``label: null`` and is counted as :data:`UNCLASSIFIED` ("refer for manual review").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core import contract as c

__all__ = [
    "CELL_KEYS",
    "ANSWER_KEYS",
    "UNCLASSIFIED",
    "Cell",
    "CellAnswer",
    "build_cell",
    "count_cells",
    "counts_of",
    "CELL_COLOURS",
    "ARTEFACT",
]

#: Keys of every cell entry.
CELL_KEYS = frozenset(
    {
        "box",
        "score",
        "kind",
        "label",
        "confidence",
        "probabilities",
        "abstained",
        "nucleus_polygon",
        "cell_polygon",
        "nucleus_area_px",
        "cell_area_px",
        "nc_ratio",
    }
)
#: Keys of every success body (``annotated_png`` only when the request asks for it).
ANSWER_KEYS = frozenset({"model", "version", "cells", "counts", "abstain_threshold", "quality", "timing_ms", "notice"})
UNCLASSIFIED = "unclassified"
#: A reviewer's label only (never the model's): the detection is not a cell (debris, smudge, stain
#: precipitate, a red cell taken for a white one); counted apart, never in the differential.
ARTEFACT = "artefact"


@dataclass
class Cell:
    """One cell entry (:data:`CELL_KEYS`) in input-image pixel coordinates."""

    box: list[int]
    score: float
    kind: str
    label: str | None
    confidence: float
    probabilities: dict[str, float]
    abstained: bool
    nucleus_polygon: list[list[int]]
    cell_polygon: list[list[int]]
    nucleus_area_px: int
    cell_area_px: int
    nc_ratio: float

    @classmethod
    def build(
        cls,
        *,
        box: Sequence[int],
        score: float,
        kind: str,
        probabilities: Sequence[float],
        classes: Sequence[str],
        abstain_threshold: float,
        nucleus_polygon: Sequence[Sequence[int]],
        cell_polygon: Sequence[Sequence[int]],
        nucleus_area_px: int,
        cell_area_px: int,
    ) -> Cell:
        """The entry of one found cell: typed unless its top probability is under ``abstain_threshold``."""
        if len(probabilities) != len(classes):
            raise ValueError(f"{len(probabilities)} probabilities for {len(classes)} classes")
        probs = [float(p) for p in probabilities]
        top = max(range(len(probs)), key=probs.__getitem__)
        abstained = probs[top] < float(abstain_threshold)
        return cls(
            box=[int(v) for v in box],
            score=round(float(score), 4),
            kind=kind,
            label=None if abstained else classes[top],
            confidence=round(probs[top], 6),
            probabilities={c: round(p, 6) for c, p in zip(classes, probs, strict=True)},
            abstained=abstained,
            nucleus_polygon=[[int(x), int(y)] for x, y in nucleus_polygon],
            cell_polygon=[[int(x), int(y)] for x, y in cell_polygon],
            nucleus_area_px=int(nucleus_area_px),
            cell_area_px=int(cell_area_px),
            nc_ratio=round(nucleus_area_px / cell_area_px, 4) if cell_area_px else 0.0,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "box": list(self.box),
            "score": self.score,
            "kind": self.kind,
            "label": self.label,
            "confidence": self.confidence,
            "probabilities": dict(self.probabilities),
            "abstained": self.abstained,
            "nucleus_polygon": [list(p) for p in self.nucleus_polygon],
            "cell_polygon": [list(p) for p in self.cell_polygon],
            "nucleus_area_px": self.nucleus_area_px,
            "cell_area_px": self.cell_area_px,
            "nc_ratio": self.nc_ratio,
        }

    @classmethod
    def parse(cls, item: Any, where: str, classes: Sequence[str] | None = None) -> Cell:
        """One cell entry of an answer, checked (``classes``: the types it may name)."""
        item = c.obj(item, where)
        box = c.int_list(item, "box", where, length=4)
        if box[0] > box[2] or box[1] > box[3]:
            raise c.ContractError(f"{where}: box {box} is not [x0, y0, x1, y1]")
        label = c.optional_text(item, "label", where)
        probabilities = c.number_map(item, "probabilities", where)
        known = set(probabilities) if classes is None else set(classes)
        if label is not None and label not in known:
            raise c.ContractError(f"{where}: unknown type {label!r}")
        if set(probabilities) - known:
            raise c.ContractError(f"{where}: unknown types in probabilities {sorted(set(probabilities) - known)}")
        abstained = c.boolean(item, "abstained", where)
        if abstained != (label is None):
            raise c.ContractError(f"{where}: abstained {abstained} with label {label!r}")
        return cls(
            box=box,
            score=c.number(item, "score", where),
            kind=c.text(item, "kind", where),
            label=label,
            confidence=c.number(item, "confidence", where),
            probabilities=probabilities,
            abstained=abstained,
            nucleus_polygon=c.points(item, "nucleus_polygon", where),
            cell_polygon=c.points(item, "cell_polygon", where),
            nucleus_area_px=c.integer(item, "nucleus_area_px", where),
            cell_area_px=c.integer(item, "cell_area_px", where),
            nc_ratio=c.number(item, "nc_ratio", where),
        )


def build_cell(**fields: Any) -> dict[str, Any]:
    """:meth:`Cell.build` written as its JSON entry."""
    return Cell.build(**fields).to_json()


@dataclass
class CellAnswer:
    """The cell model's success body (:data:`ANSWER_KEYS`; ``annotated_png`` only when asked for).
    A refusal is a :class:`core.errors.RequestError`, as for the frame classifiers."""

    model: str
    version: str
    cells: list[Cell]
    counts: dict[str, int]
    abstain_threshold: float
    quality: dict[str, Any]
    timing_ms: dict[str, float]
    notice: str
    annotated_png: str | None = None

    @classmethod
    def build(
        cls,
        *,
        model: str,
        version: str,
        cells: Sequence[Cell],
        classes: Sequence[str],
        abstain_threshold: float,
        quality: Mapping[str, Any],
        notice: str,
    ) -> CellAnswer:
        """The answer for one frame, its counts from its cells (timings and the annotated image set after)."""
        return cls(
            model=model,
            version=version,
            cells=list(cells),
            counts=count_cells((cell.label for cell in cells), classes),
            abstain_threshold=abstain_threshold,
            quality=dict(quality),
            timing_ms={},
            notice=notice,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "cells": [cell.to_json() for cell in self.cells],
            "counts": dict(self.counts),
            "abstain_threshold": self.abstain_threshold,
            "quality": dict(self.quality),
            "notice": self.notice,
        }
        if self.annotated_png is not None:
            out["annotated_png"] = self.annotated_png
        out["timing_ms"] = dict(self.timing_ms)
        return out

    @classmethod
    def parse(cls, body: Any, classes: Sequence[str] | None = None) -> CellAnswer:
        """A model server's JSON body as a cell answer; :class:`~core.contract.ContractError` naming the field
        when it breaks the contract (``classes``: the types it may name; keys it does not know are ignored)."""
        where = "answer"
        body = c.obj(body, where)
        raw_cells = body.get("cells")
        if not isinstance(raw_cells, list):
            raise c.ContractError(f"{where}: 'cells' should be a list, not {type(raw_cells).__name__}")
        counts = c.obj(body.get("counts"), f"{where}.counts")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()):
            raise c.ContractError(f"{where}.counts: every count should be a non-negative integer")
        return cls(
            model=c.text(body, "model", where),
            version=c.text(body, "version", where),
            cells=[Cell.parse(item, f"cell {i}", classes) for i, item in enumerate(raw_cells)],
            counts={str(k): v for k, v in counts.items()},
            abstain_threshold=c.number(body, "abstain_threshold", where),
            quality=c.json_object(body, "quality", where),
            timing_ms=c.number_map(body, "timing_ms", where),
            notice=c.text(body, "notice", where),
            annotated_png=c.optional_text(body, "annotated_png", where, required=False),
        )


def count_cells(labels: Iterable[str | None], classes: Sequence[str]) -> dict[str, int]:
    """Counts per class (every class listed, zeros included) plus :data:`UNCLASSIFIED` for ``None``."""
    counter = Counter(UNCLASSIFIED if label is None else label for label in labels)
    unknown = set(counter) - set(classes) - {UNCLASSIFIED}
    if unknown:
        raise ValueError(f"unknown cell labels: {sorted(unknown)}")
    return {name: counter.get(name, 0) for name in (*classes, UNCLASSIFIED)}


def counts_of(cells: Iterable[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, int]:
    """:func:`count_cells` over answer entries (their ``label``)."""
    return count_cells((c.get("label") for c in cells), classes)


#: Drawing colour per cell type (annotated image and portal overlay), and for unclassified cells.
CELL_COLOURS: dict[str, str] = {
    "basophil": "#6a3d9a",
    "eosinophil": "#e6550d",
    "erythroblast": "#b15928",
    "ig": "#e7298a",
    "lymphocyte": "#1f78b4",
    "monocyte": "#33a02c",
    "neutrophil": "#17becf",
    "platelet": "#bcbd22",
    "blast": "#d62728",
    UNCLASSIFIED: "#7f7f7f",
    ARTEFACT: "#000000",
}
