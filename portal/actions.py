"""Domain actions: every write to the portal's data goes through here.

Each action runs inside ``transaction.atomic`` and adds its audit row in the same transaction, so
a change without its audit row (or the reverse) cannot be committed. Calling TorchServe is not an
action: an upload commits its analyses together with one queued job each (portal.jobs), and a
worker stores each outcome here, once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models, transaction
from django.http import HttpRequest
from django.utils import timezone

from core.cell_answer import CellAnswer
from core.contract import ContractError
from core.prediction import FramePrediction
from core.registry import CELL_CLASSES
from portal.analyses import storage
from portal.analyses.consensus import consensus
from portal.analyses.differential import REVIEW_LABELS
from portal.analyses.inference import CellPrediction, Prediction, Refusal, ServerError
from portal.analyses.models import (
    CLASS_LABELS,
    Analysis,
    Cell,
    CellAnalysis,
    Image,
    ImageReview,
    ImmutableError,
    QueuedJob,
    image_is_signed,
    specimen_is_signed,
)
from portal.analyses.validation import ValidatedImage
from portal.audit.log import record
from portal.patients.models import Patient, Specimen

__all__ = [
    "change_password",
    "create_patient",
    "create_specimen",
    "log_event",
    "log_refusal",
    "reclassify_cell",
    "refusal_reason",
    "register_user",
    "sign_off",
    "store_cell_outcome",
    "store_outcome",
    "update_patient",
    "update_specimen",
    "upload_images",
]

log = logging.getLogger("portal.actions")

User = Any  # the configured user model instance


def _changes(obj: models.Model, data: dict[str, Any]) -> dict[str, list[str]]:
    """Field -> [old, new] for the fields that differ (as strings, for the audit row)."""
    out = {}
    for key, value in data.items():
        old = getattr(obj, key)
        if old != value:
            out[key] = [str(old), str(value)]
    return out


_M = TypeVar("_M", bound=models.Model)


def _update(actor: User, obj: _M, data: dict[str, Any], action: str, request: HttpRequest | None) -> _M:
    """Lock the row, apply ``data``, validate, save and audit the field-level changes, in one transaction."""
    with transaction.atomic():
        obj = type(obj)._default_manager.select_for_update().get(pk=obj.pk)
        changes = _changes(obj, data)
        for key, value in data.items():
            setattr(obj, key, value)
        obj.full_clean()
        obj.save()
        record(action, actor=actor, obj=obj, data={"changes": changes}, request=request)
    return obj


# --- accounts -----------------------------------------------------------------------------------


def register_user(
    *, username: str, email: str, first_name: str, last_name: str, password: str, request: HttpRequest | None = None
) -> User:
    """Self-registration: an inactive account without roles, until an admin approves it."""
    from django.contrib.auth import get_user_model

    with transaction.atomic():
        user = get_user_model().objects.create_user(
            username=username,
            email=email,
            first_name=first_name,
            last_name=last_name,
            password=password,
            is_active=False,
        )
        record("user.register", actor=user, obj=user, data={"email": email}, request=request)
    return user


def change_password(user: AbstractBaseUser, new_password: str, request: HttpRequest | None = None) -> None:
    with transaction.atomic():
        user.set_password(new_password)
        user.save(update_fields=["password"])
        record("user.password_change", actor=user, obj=user, request=request)


def log_event(
    action: str,
    *,
    actor: Any,
    obj: models.Model | None = None,
    data: dict[str, Any] | None = None,
    request: HttpRequest | None = None,
    object_type: str = "",
    object_id: str = "",
) -> None:
    """Audit a read (view, search, export) or an auth event; reads change nothing else."""
    with transaction.atomic():
        record(action, actor=actor, obj=obj, data=data, request=request, object_type=object_type, object_id=object_id)


def refusal_reason(exc: Exception) -> str:
    """Why an action refused, in words: a validation error's messages joined, else the exception's text."""
    return "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)


def log_refusal(action: str, actor: User, obj: Any, request: HttpRequest | None, exc: Exception, **data: Any) -> None:
    """Audit a refused write (``<what>_refused``) with ``data`` and the reason (500 characters at most)."""
    log_event(
        action,
        actor=None if isinstance(actor, AnonymousUser) else actor,
        obj=obj,
        request=request,
        data={**data, "reason": refusal_reason(exc)[:500]},
    )


# --- patients and specimens ---------------------------------------------------------------------


def create_patient(actor: User, data: dict[str, Any], request: HttpRequest | None = None) -> Patient:
    with transaction.atomic():
        patient = Patient(created_by=actor, **data)
        patient.full_clean()
        patient.save()
        record("patient.create", actor=actor, obj=patient, data={"mrn": patient.mrn}, request=request)
    return patient


def update_patient(actor: User, patient: Patient, data: dict[str, Any], request: HttpRequest | None = None) -> Patient:
    return _update(actor, patient, data, "patient.edit", request)


def create_specimen(
    actor: User, patient: Patient, data: dict[str, Any], request: HttpRequest | None = None
) -> Specimen:
    with transaction.atomic():
        specimen = Specimen(patient=patient, created_by=actor, **data)
        specimen.full_clean()
        specimen.save()
        record(
            "specimen.create",
            actor=actor,
            obj=specimen,
            data={"patient_id": patient.pk, "accession": specimen.accession},
            request=request,
        )
    return specimen


def update_specimen(
    actor: User, specimen: Specimen, data: dict[str, Any], request: HttpRequest | None = None
) -> Specimen:
    return _update(actor, specimen, data, "specimen.edit", request)


# --- uploads and analyses -----------------------------------------------------------------------


def upload_images(
    actor: User,
    specimen: Specimen,
    images: Sequence[ValidatedImage],
    model_names: Sequence[str],
    request: HttpRequest | None = None,
) -> list[Image]:
    """Store validated images; commit them with one pending Analysis and one queued job per (image, model),
    and one pending CellAnalysis with its job per image when a cell model is configured (PORTAL_CELL_MODEL).

    Files are written first (random names); rows, jobs and the audit row are committed together
    (the job queue lives in the same database), so an accepted upload always has its jobs. If the
    transaction fails before its commit, the files just written are removed; if the commit itself
    fails (the connection dropped), whether it happened is unknown, so the files stay: a row may
    reference them, and the sweep (portal.jobs.sweep) removes them later if none does.
    Workers call TorchServe after commit.
    """
    from portal import jobs

    if not images:
        raise ValidationError("choose at least one image")
    unknown = sorted(set(model_names) - set(settings.PORTAL_MODELS))
    if unknown or not model_names:
        raise ValidationError(f"unknown model(s): {', '.join(unknown) or '(none chosen)'}")
    written: list[str] = []
    committing = False
    try:
        for item in images:
            written.append(storage.save("images", item.data, item.extension))
        with transaction.atomic():
            # the specimen's row is locked as its sign-off locks it (portal.specimen_actions): one or the other
            Specimen.objects.select_for_update().get(pk=specimen.pk)
            if specimen_is_signed(specimen.pk):
                raise ValidationError("this specimen is signed off: it takes no more images (start a new specimen)")
            created: list[Image] = []
            analysis_ids: list[int] = []
            cell_analysis_ids: list[int] = []
            cell_model = settings.PORTAL_CELL_MODEL
            for item, name in zip(images, written, strict=True):
                image = Image.objects.create(
                    specimen=specimen,
                    storage_name=name,
                    original_name=item.original_name,
                    content_type=item.content_type,
                    size_bytes=len(item.data),
                    width=item.width,
                    height=item.height,
                    sha256=item.sha256,
                    uploaded_by=actor,
                )
                created.append(image)
                for model_name in model_names:
                    analysis_ids.append(
                        Analysis.objects.create(image=image, model_name=model_name, requested_by=actor).pk
                    )
                if cell_model:
                    cell_analysis_ids.append(
                        CellAnalysis.objects.create(image=image, model_name=cell_model, requested_by=actor).pk
                    )
            record(
                "image.upload",
                actor=actor,
                obj=specimen,
                request=request,
                data={
                    "images": [{"id": i.pk, "name": i.original_name, "sha256": i.sha256} for i in created],
                    "models": list(model_names),
                    "cell_model": cell_model,
                },
            )
            jobs.enqueue(analysis_ids)
            jobs.enqueue_cells(cell_analysis_ids)
            committing = True  # an error after this line comes from the commit: its outcome is unknown
    except BaseException:
        if not committing:
            for name in written:
                storage.delete(name)
        raise
    return created


def store_outcome(analysis_id: int, outcome: Prediction | Refusal | ServerError) -> str | None:
    """Store the final outcome of a pending analysis, with its audit row; at most once per analysis.

    ``Prediction`` -> done (with its heatmap), ``Refusal`` -> rejected, ``ServerError`` -> failed.
    Returns the new status, or None when the analysis was already final (another worker stored it
    first): the second result is dropped, never stored twice.
    """
    heatmap_name = ""
    committing = False
    answer: FramePrediction | None = None
    if isinstance(outcome, Prediction):
        try:
            answer = FramePrediction.parse(outcome.body, CLASS_LABELS)
        except ContractError as exc:
            outcome = ServerError(f"the model's answer breaks the contract: {exc}")
        else:
            if outcome.heatmap_png:
                heatmap_name = storage.save("heatmaps", outcome.heatmap_png, "png")
    try:
        with transaction.atomic():
            analysis = Analysis.objects.select_for_update().get(pk=analysis_id)
            if analysis.is_final:
                if heatmap_name:
                    transaction.on_commit(lambda: storage.delete(heatmap_name))
                return None
            analysis.close(timezone.now())
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
            committing = True  # as in upload_images: a failed commit keeps the file for the sweep to judge
            return analysis.status
    except BaseException:
        if heatmap_name and not committing:
            storage.delete(heatmap_name)
        raise


def _end_without_result(job: QueuedJob, outcome: Refusal | ServerError, kind: str) -> tuple[str, dict[str, Any]]:
    """A refusal (rejected, final) or a server error past its retries (failed): status, error, audit action."""
    if isinstance(outcome, Refusal):
        job.status, job.error_code, job.error_message = QueuedJob.Status.REJECTED, outcome.code, outcome.message
        return f"{kind}.reject", {"code": outcome.code, "message": outcome.message}
    job.status, job.error_code, job.error_message = QueuedJob.Status.FAILED, "server_error", outcome.message
    return f"{kind}.fail", {"error": outcome.message, "attempts": job.attempts}


# --- cells ------------------------------------------------------------------------------------


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
    annotated_name = ""
    committing = False
    cells: list[dict[str, Any]] = []
    if isinstance(outcome, CellPrediction):
        image = Image.objects.only("width", "height").get(cell_analysis__pk=cell_analysis_id)
        try:
            cells = _cells_from(outcome.body, image.width, image.height)
        except (KeyError, TypeError, ValueError) as exc:
            outcome = ServerError(f"the cell model's answer breaks the contract: {exc}")
        else:
            if outcome.annotated_png:
                annotated_name = storage.save("annotated", outcome.annotated_png, "png")
    try:
        with transaction.atomic():
            job = CellAnalysis.objects.select_for_update().get(pk=cell_analysis_id)
            if job.is_final:
                if annotated_name:
                    transaction.on_commit(lambda: storage.delete(annotated_name))
                return None
            job.close(timezone.now())
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
            committing = True
            return job.status
    except BaseException:
        if annotated_name and not committing:
            storage.delete(annotated_name)
        raise


def reclassify_cell(actor: User, cell: Cell, label: str, request: HttpRequest | None = None) -> Cell:
    """A technologist sets a cell's type (the differential counts it there), audited old -> new; the
    type may be "artefact" (not a cell: left out of every count, reported as excluded).

    Refused (and audited as refused) without analyses.reclassify_cell, for a label outside
    portal.analyses.differential.REVIEW_LABELS, or once a reviewer signed off the cell's frame.
    """
    try:
        return _reclassify_cell(actor, cell, label, request)
    except (PermissionDenied, ValidationError, ImmutableError) as exc:
        log_refusal("cell.reclassify_refused", actor, cell, request, exc, image_id=cell.image_id, new=label[:40])
        raise


def _reclassify_cell(actor: User, cell: Cell, label: str, request: HttpRequest | None) -> Cell:
    if isinstance(actor, AnonymousUser) or not actor.has_perm("analyses.reclassify_cell"):
        raise PermissionDenied("only technologists and reviewers can reclassify cells")
    if label not in REVIEW_LABELS:
        raise ValidationError(f"unknown cell type {label!r}")
    with transaction.atomic():
        cell = Cell.objects.select_for_update().get(pk=cell.pk)
        if image_is_signed(cell.image_id):
            raise ImmutableError("this frame is signed off: its cells cannot be reclassified")
        old = cell.final_label
        cell.reviewed_label = label
        cell.reviewed_by = actor
        cell.reviewed_at = timezone.now()
        cell.save(update_fields=["reviewed_label", "reviewed_by", "reviewed_at"])
        record(
            "cell.reclassify",
            actor=actor,
            obj=cell,
            request=request,
            data={"image_id": cell.image_id, "model_label": cell.label, "old": old, "new": label},
        )
    return cell


# --- review -------------------------------------------------------------------------------------


def sign_off(
    actor: User,
    image: Image,
    *,
    decision: str,
    final_label: str | None = None,
    comment: str = "",
    expected_label: str | None = None,
    request: HttpRequest | None = None,
) -> ImageReview:
    """A reviewer's one decision on an image: agree with the consensus of its models, or reclassify it
    (a label and a comment). The image, its analyses and its cells are then immutable.

    ``expected_label``: the class the reviewer was told would be recorded (the sign-off button's); when
    given, a decision that would record another class (the consensus changed meanwhile) is refused.
    "agree" with a ``final_label`` other than the consensus is refused too: the reviewer's two answers
    disagree, and neither may be guessed.

    A refused sign-off (no permission, already signed, models still running, invalid) raises and leaves
    its own audit row.
    """
    try:
        return _sign_off(actor, image, decision, final_label, comment, expected_label, request)
    except (PermissionDenied, ValidationError, ImmutableError) as exc:
        log_refusal(
            "image.sign_off_refused",
            actor,
            image,
            request,
            exc,
            decision=decision,
            final_label=final_label or "",
            expected_label=expected_label or "",
        )
        raise


def _evidence(analyses: Sequence[Analysis]) -> dict[str, dict[str, Any]]:
    """Each model's answer as the reviewer saw it (kept in the review)."""
    return {
        a.model_name: {
            "version": a.model_version,
            "status": a.status,
            "label": a.label or None,
            "abstained": a.abstained,
            "abstain_reason": a.abstain_reason,
            "probabilities": a.probabilities,
            "error_code": a.error_code,
        }
        for a in analyses
    }


def _sign_off(
    actor: User,
    image: Image,
    decision: str,
    final_label: str | None,
    comment: str,
    expected_label: str | None,
    request: HttpRequest | None,
) -> ImageReview:
    if isinstance(actor, AnonymousUser) or not actor.has_perm("analyses.sign_off_analysis"):
        raise PermissionDenied("only reviewers can sign off")
    if decision not in ImageReview.Decision.values:
        raise ValidationError(f"unknown decision {decision!r}")
    with transaction.atomic():
        image = Image.objects.select_for_update().get(pk=image.pk)
        if image_is_signed(image.pk):
            raise ImmutableError("this image is already signed off")
        analyses = list(image.analyses.order_by("model_name"))
        if any(not a.is_final for a in analyses):
            raise ValidationError("some models are still running: sign off once every result is in")
        if not any(a.status == Analysis.Status.DONE for a in analyses):
            raise ValidationError("no model has a result for this image")
        agreed = consensus(analyses)
        consensus_label = agreed.label if agreed else None
        if decision == ImageReview.Decision.AGREE:
            if not consensus_label:
                raise ValidationError("the models reached no consensus: reclassify with a label and a comment")
            if final_label and final_label != consensus_label:
                raise ValidationError(
                    f"agreeing with the consensus ({consensus_label}) records {consensus_label}, not {final_label}: "
                    "reclassify to record another class"
                )
            final = consensus_label
        else:
            if final_label not in CLASS_LABELS:
                raise ValidationError("choose the class for the reclassification")
            if not comment.strip():
                raise ValidationError("a reclassification needs a comment")
            final = str(final_label)
        if expected_label is not None and expected_label != final:
            raise ValidationError(
                f"this decision records {final}, not {expected_label or '(nothing)'} as shown: check and sign again"
            )
        review = ImageReview.objects.create(
            image=image,
            reviewer=actor,
            reviewer_name=actor.get_username(),
            decision=decision,
            final_label=final,
            consensus_label=consensus_label or "",
            comment=comment.strip(),
            evidence=_evidence(analyses),
        )
        record(
            "image.sign_off",
            actor=actor,
            obj=image,
            request=request,
            data={
                "decision": decision,
                "consensus_label": consensus_label or "",
                "final_label": final,
                "comment": review.comment,
                "models": {a.model_name: a.label or None for a in analyses if a.status == Analysis.Status.DONE},
            },
        )
    return review
