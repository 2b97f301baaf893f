"""A job's final outcome: the model server's answer parsed and stored with its audit row, once.

Called by the pipeline (portal.jobs), which owns the job's life; an outcome is final (done, rejected,
failed) and stored at most once per analysis, checked under a row lock. Files written for the outcome (the
heatmap, the annotated image) are removed unless the transaction commits (storage.files_with_rows).
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.utils import timezone

from core.cell_answer import CellAnswer
from core.contract import ContractError
from core.prediction import FramePrediction
from core.registry import CELL_CLASSES
from portal.analyses import storage
from portal.analyses.inference import CellPrediction, Prediction, Refusal, ServerError
from portal.analyses.models import CLASS_LABELS, Analysis, Cell, CellAnalysis, Image, QueuedJob
from portal.audit.log import record

__all__ = ["store_cell_outcome", "store_outcome"]

_J = TypeVar("_J", bound=QueuedJob)


def store_outcome(analysis_id: int, outcome: Prediction | Refusal | ServerError) -> str | None:
    """Store the final outcome of a pending analysis, with its audit row; at most once per analysis.

    ``Prediction`` -> done (with its heatmap), ``Refusal`` -> rejected, ``ServerError`` -> failed.
    Returns the new status, or None when the analysis was already final (another worker stored it
    first): the second result is dropped, never stored twice.
    """
    answer: FramePrediction | None = None
    if isinstance(outcome, Prediction):
        try:
            answer = FramePrediction.parse(outcome.body, CLASS_LABELS)
        except ContractError as exc:
            outcome = ServerError(f"the model's answer breaks the contract: {exc}")
    png = outcome.heatmap_png if isinstance(outcome, Prediction) else None
    with storage.files_with_rows(*([("heatmaps", png, "png")] if png else [])) as files:
        analysis, heatmap_name = _close(Analysis, analysis_id, files)
        if analysis is None:
            return None
        if isinstance(outcome, Prediction):
            assert answer is not None  # parsed above (an answer that breaks the contract is a ServerError)
            analysis.status = Analysis.Status.DONE
            analysis.model_version = answer.version[:20]
            analysis.label = answer.label or ""
            analysis.confidence = answer.confidence
            analysis.probabilities = {k: float(v) for k, v in answer.probabilities.items()}
            analysis.malignant_probability = answer.malignant_probability
            analysis.abstained = answer.abstained
            analysis.abstain_reason = (answer.abstain_reason or "")[:40]
            analysis.quality = answer.quality
            analysis.timing_ms = answer.timing_ms
            analysis.latency_ms = round(outcome.latency_ms, 1)
            analysis.error_code = ""
            analysis.error_message = "" if heatmap_name else "heatmap unavailable"
            analysis.heatmap_name = heatmap_name
            analysis.heatmap_label = outcome.explained_class[:10]
            action, data = (
                "analysis.complete",
                {"label": analysis.label, "abstained": analysis.abstained, "version": analysis.model_version},
            )
        else:
            action, data = _end_without_result(analysis, outcome, "analysis")
        analysis.save()
        record(
            action,
            actor=None,
            obj=analysis,
            data={"image_id": analysis.image_id, "model": analysis.model_name, **data},
        )
        return analysis.status


def _close(model: type[_J], pk: int, files: storage.StagedFiles) -> tuple[_J | None, str]:
    """Lock a pending job and close it, with the image file of its answer (if any, in ``files``); (None,
    name) when it is final already: the second result is dropped, its file removed on commit."""
    name = files.names[0] if files.names else ""
    job = model._default_manager.select_for_update().get(pk=pk)
    if job.is_final:
        if name:
            files.discard(name)
        return None, name
    job.close(timezone.now())
    return job, name


def _end_without_result(job: QueuedJob, outcome: Refusal | ServerError, kind: str) -> tuple[str, dict[str, Any]]:
    """A refusal (rejected, final) or a server error past its retries (failed): status, error, audit action."""
    if isinstance(outcome, Refusal):
        job.status, job.error_code, job.error_message = QueuedJob.Status.REJECTED, outcome.code, outcome.message
        return f"{kind}.reject", {"code": outcome.code, "message": outcome.message}
    job.status, job.error_code, job.error_message = QueuedJob.Status.FAILED, "server_error", outcome.message
    return f"{kind}.fail", {"error": outcome.message, "attempts": job.attempts}


def _cells_from(body: dict[str, Any], width: int, height: int) -> list[dict[str, Any]]:
    """The answer's cells as Cell fields (boxes clipped to the image); core.contract.ContractError (a
    ValueError) when the answer breaks the contract (core.cell_answer.CellAnswer.parse)."""
    rows = []
    for index, cell in enumerate(CellAnswer.parse(body, CELL_CLASSES).cells):
        box = [min(max(v, 0), limit) for v, limit in zip(cell.box, (width, height, width, height), strict=True)]
        rows.append(
            {
                "index": index,
                "box": box,
                "score": cell.score,
                "label": cell.label or "",
                "probabilities": {k: float(v) for k, v in cell.probabilities.items()},
                "abstained": cell.abstained,
                "nucleus_polygon": _polygon(cell.nucleus_polygon),
                "cell_polygon": _polygon(cell.cell_polygon),
                "nucleus_area_px": max(0, cell.nucleus_area_px),
                "cell_area_px": max(0, cell.cell_area_px),
                "nc_ratio": cell.nc_ratio,
            }
        )
    return rows


def _polygon(points: Any) -> list[list[float]]:
    return [[round(float(x), 1), round(float(y), 1)] for x, y in points or []]


def store_cell_outcome(cell_analysis_id: int, outcome: CellPrediction | Refusal | ServerError) -> str | None:
    """Store the final outcome of a pending cell analysis (its cells and annotated image), audited, at
    most once; the same contract as :func:`store_outcome`. An answer that breaks the cell contract fails."""
    cells: list[dict[str, Any]] = []
    if isinstance(outcome, CellPrediction):
        image = Image.objects.only("width", "height").get(cell_analysis__pk=cell_analysis_id)
        try:
            cells = _cells_from(outcome.body, image.width, image.height)
        except (KeyError, TypeError, ValueError) as exc:
            outcome = ServerError(f"the cell model's answer breaks the contract: {exc}")
    png = outcome.annotated_png if isinstance(outcome, CellPrediction) else None
    with storage.files_with_rows(*([("annotated", png, "png")] if png else [])) as files:
        job, annotated_name = _close(CellAnalysis, cell_analysis_id, files)
        if job is None:
            return None
        if isinstance(outcome, CellPrediction):
            body = outcome.body
            job.status = CellAnalysis.Status.DONE
            job.model_version = str(body.get("version", ""))[:20]
            job.counts = {str(k): int(v) for k, v in dict(body.get("counts") or {}).items()}
            job.timing_ms = dict(body.get("timing_ms") or {})
            job.latency_ms = round(outcome.latency_ms, 1)
            job.error_code = ""
            job.error_message = "" if annotated_name else "annotated image unavailable"
            job.annotated_name = annotated_name
            Cell.objects.bulk_create(Cell(cell_analysis=job, image_id=job.image_id, **row) for row in cells)
            action, data = "cells.complete", {"cells": len(cells), "version": job.model_version}
        else:
            action, data = _end_without_result(job, outcome, "cells")
        job.save()
        record(action, actor=None, obj=job, data={"image_id": job.image_id, "model": job.model_name, **data})
        return job.status
