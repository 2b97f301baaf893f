"""The cell-level answer (``/predictions/wbc_cells``): one entry per cell found, and the counts.

Torch-free, so the portal reads answers with the same names the handler writes them with. A cell
whose top calibrated probability is under the card's ``abstain_threshold`` keeps its probabilities
but gets ``label: null`` and is counted as :data:`UNCLASSIFIED` ("refer for manual review").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "CELL_KEYS",
    "ANSWER_KEYS",
    "UNCLASSIFIED",
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


def build_cell(
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
) -> dict[str, Any]:
    """One cell entry in input-image pixel coordinates."""
    if len(probabilities) != len(classes):
        raise ValueError(f"{len(probabilities)} probabilities for {len(classes)} classes")
    probs = [float(p) for p in probabilities]
    top = max(range(len(probs)), key=probs.__getitem__)
    abstained = probs[top] < float(abstain_threshold)
    return {
        "box": [int(v) for v in box],
        "score": round(float(score), 4),
        "kind": kind,
        "label": None if abstained else classes[top],
        "confidence": round(probs[top], 6),
        "probabilities": {c: round(p, 6) for c, p in zip(classes, probs, strict=True)},
        "abstained": abstained,
        "nucleus_polygon": [[int(x), int(y)] for x, y in nucleus_polygon],
        "cell_polygon": [[int(x), int(y)] for x, y in cell_polygon],
        "nucleus_area_px": int(nucleus_area_px),
        "cell_area_px": int(cell_area_px),
        "nc_ratio": round(nucleus_area_px / cell_area_px, 4) if cell_area_px else 0.0,
    }


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
