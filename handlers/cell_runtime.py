"""The cell-level model and everything it needs to answer requests, independent of TorchServe.

:class:`CellRuntime` reads a model directory as unpacked from ``wbc_cells.mar`` (``model/`` with the
typer's weights and config written by :func:`training.cell_typer.save_typer`, ``model_card.json``).
One request: decode and validate (:mod:`core.decode`, the same limits as the frame models), the smear
gate from the card (fails closed), then :class:`CellPipeline`: the image at its true shape
(:func:`core.aspect.true_shape`: an exactly 224x224 upload is a 4:3 camera frame squashed to a
square and is widened by 4/3 first), the cell finder (:func:`cells.segment.find_cells`: boxes,
nucleus and cell outlines), one batched typer pass over the cells' crops, temperature-scaled
probabilities and abstention per cell (:func:`core.cell_answer.build_cell`); boxes and outlines
are mapped back to the uploaded image's pixels. Then counts, and on request the annotated image.

A detection of platelet size (``kind`` platelet: a nucleus under a quarter of a red cell's area) is
never typed as a white cell: its probabilities are renormalised over the non-white types
(:func:`restrict_small`). A white cell, a blast above all, is larger than a red cell; on the B-ALL
frames such specks were counted as white cells, and through the served path 11 of 40 PBC platelet
images were called blast (a platelet's crop, enlarged, is a blurred purple dot).

:class:`CellPipeline` is also what evaluation runs (:mod:`evaluation.cell_served`), so the model
card's served-path numbers measure exactly this code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cells.segment import PLATELET, find_cells
from core.aspect import to_upload_box, to_upload_polygon, true_shape
from core.card import check_card_matches, read_card
from core.cell_answer import Cell, CellAnswer
from core.decode import decode_request, request_flag
from core.prediction import NOTICE
from core.registry import LEUKOCYTE_CLASSES
from handlers.annotate import annotated_png_base64
from handlers.postprocess import calibrated_probabilities
from handlers.runtime import MODEL_SUBDIR, elapsed_ms
from served_model.cell_typer import CellTyper, build_typer_transform, crop_cell, load_typer
from served_model.smear_gate import SmearGate

__all__ = ["CellPipeline", "CellRuntime", "restrict_small", "wants_annotation"]
#: crops typed per forward pass (a crowded frame has a few dozen cells)
TYPER_BATCH = 32


def wants_annotation(row: Any, header: str | None = None, explain: str | None = None) -> bool:
    """Whether a request asks for ``annotated_png``.

    Asked by the header ``annotate: 1``, by ``"annotate": true`` in a JSON body (``parameters`` of a
    v2 request), or by calling ``/explanations/wbc_cells`` (TorchServe sets the header ``explain: True``).
    """
    return request_flag(row, "annotate", header, explain)


def restrict_small(probs: list[float], classes: list[str]) -> list[float]:
    """Probabilities of a platelet-sized detection: the white-cell types' mass removed, the rest renormalised."""
    kept = [0.0 if c in LEUKOCYTE_CLASSES else p for p, c in zip(probs, classes, strict=True)]
    total = sum(kept)
    if total <= 0.0:
        return [1.0 if c == PLATELET else 0.0 for c in classes]
    return [p / total for p in kept]


class CellPipeline:
    """Finder then typer on one image: the cells in the uploaded image's pixels, with timings."""

    def __init__(self, typer: CellTyper, temperature: float, abstain_threshold: float) -> None:
        self.typer = typer.eval()
        for p in self.typer.parameters():
            p.requires_grad_(False)
        self.spec = typer.spec
        self.classes: list[str] = list(typer.spec.classes)
        self.temperature = float(temperature)
        self.abstain_threshold = float(abstain_threshold)
        self.transform = build_typer_transform(self.spec)

    @classmethod
    def from_typer_dir(cls, directory: str | Path) -> CellPipeline:
        """A saved typer with the calibration in its own config (evaluation of a trained typer)."""
        typer = load_typer(directory)
        return cls(typer, typer.calibration["temperature"], typer.calibration["abstain_threshold"])

    def type_crops(self, crops: list[torch.Tensor]) -> torch.Tensor:
        """Calibrated probabilities (N x classes) of preprocessed crops, in batches."""
        if not crops:
            return torch.zeros((0, len(self.classes)))
        out = []
        with torch.inference_mode():
            for i in range(0, len(crops), TYPER_BATCH):
                logits = self.typer(torch.stack(crops[i : i + TYPER_BATCH]))
                out.append(calibrated_probabilities(logits, self.temperature))
        return torch.cat(out)

    def cells(self, image: Image.Image, timing: dict[str, float] | None = None) -> list[dict[str, Any]]:
        """Every cell found on ``image`` (RGB), typed, as answer entries; ``timing`` (if given) gets ``segment``
        and ``type`` ms."""
        return [cell.to_json() for cell in self.typed_cells(image, timing)]

    def typed_cells(self, image: Image.Image, timing: dict[str, float] | None = None) -> list[Cell]:
        """:meth:`cells` as the contract's :class:`~core.cell_answer.Cell` entries."""
        timing = timing if timing is not None else {}
        t = time.perf_counter()
        shaped, x_scale = true_shape(image)
        found = find_cells(np.asarray(shaped))
        timing["segment"] = elapsed_ms(t)
        t = time.perf_counter()
        crops = [self.transform(crop_cell(shaped, c.box, self.spec)) for c in found]
        probs = [
            restrict_small(p, self.classes) if c.kind == PLATELET else p
            for c, p in zip(found, self.type_crops(crops).tolist(), strict=True)
        ]
        timing["type"] = elapsed_ms(t)
        return [
            Cell.build(
                box=to_upload_box(c.box, x_scale),
                score=c.score,
                kind=c.kind,
                probabilities=p,
                classes=self.classes,
                abstain_threshold=self.abstain_threshold,
                nucleus_polygon=to_upload_polygon(c.nucleus_polygon, x_scale),
                cell_polygon=to_upload_polygon(c.cell_polygon, x_scale),
                nucleus_area_px=int(round(c.nucleus_area_px / x_scale)),
                cell_area_px=int(round(c.cell_area_px / x_scale)),
            )
            for c, p in zip(found, probs, strict=True)
        ]


class CellRuntime:
    """The cell finder, the cell typer, its card and its gate."""

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        # fails closed: a card without a valid smear gate does not load
        self.card: dict[str, Any] = read_card(model_dir)
        self.typer = load_typer(model_dir / MODEL_SUBDIR).eval()
        for p in self.typer.parameters():
            p.requires_grad_(False)
        self.spec = self.typer.spec
        spec = self.spec
        check_card_matches(
            self.card, name=spec.name, classes=spec.classes, input_size=spec.input_size, mean=spec.mean, std=spec.std
        )
        self.name: str = self.card["name"]
        self.version: str = self.card["version"]
        self.classes: list[str] = list(self.card["classes"])
        self.temperature = float(self.card["temperature"])
        self.abstain_threshold = float(self.card["abstain_threshold"])
        self.transform = build_typer_transform(self.spec)
        self.gate = SmearGate.from_dict(self.card["smear_gate"])
        self.pipeline = CellPipeline(self.typer, self.temperature, self.abstain_threshold)

    def type_crops(self, crops: list[torch.Tensor]) -> torch.Tensor:
        """Calibrated probabilities (N x classes) of preprocessed crops, in batches."""
        return self.pipeline.type_crops(crops)

    def analyse(self, row: Any, annotate: bool = False) -> dict[str, Any]:
        """The answer for one request row (raises :class:`core.errors.RequestError` for bad input)."""
        timing: dict[str, float] = {}
        t = time.perf_counter()
        decoded = decode_request(row)
        timing["decode"] = elapsed_ms(t)
        t = time.perf_counter()
        quality = self.gate.check(decoded.image)
        timing["gate"] = elapsed_ms(t)
        answer = CellAnswer.build(
            model=self.name,
            version=self.version,
            cells=self.pipeline.typed_cells(decoded.image, timing),
            classes=self.classes,
            abstain_threshold=self.abstain_threshold,
            quality=quality,
            notice=NOTICE,
        )
        if annotate:
            t = time.perf_counter()
            answer.annotated_png = annotated_png_base64(decoded.image, [cell.to_json() for cell in answer.cells])
            timing["annotate"] = elapsed_ms(t)
        timing["total"] = sum(timing.values())
        answer.timing_ms = {k: round(v, 3) for k, v in timing.items()}
        return answer.to_json()
