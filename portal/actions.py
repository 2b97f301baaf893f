"""Domain actions: every write to the portal's data goes through here.

Each action runs inside ``transaction.atomic`` and adds its audit row in the same transaction, so
a change without its audit row (or the reverse) cannot be committed. Side effects (calling
TorchServe) happen only after commit, through ``transaction.on_commit``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import close_old_connections, connections, models, transaction
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone

from portal.analyses import storage
from portal.analyses.inference import Explanation, Prediction, Refusal, ServerError, TorchServeClient, Unreachable
from portal.analyses.models import CLASS_LABELS, Analysis, Image, ImmutableError, Review
from portal.analyses.validation import ValidatedImage
from portal.audit.log import record
from portal.patients.models import Patient, Specimen

__all__ = [
    "change_password",
    "create_patient",
    "create_specimen",
    "log_event",
    "process_analyses",
    "process_analysis",
    "register_user",
    "retry_pending",
    "sign_off",
    "store_outcome",
    "update_patient",
    "update_specimen",
    "upload_images",
    "wait_for_background",
]

log = logging.getLogger("portal.actions")

User = Any  # the configured user model instance
LOCK_SECONDS = 300
_executor: ThreadPoolExecutor | None = None


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
    """Store validated images and create one pending Analysis per (image, model); commit; then infer.

    Files are written first (random names); the rows and the audit row are committed together;
    if the transaction fails, the files just written are removed. Inference starts only after
    commit, so a TorchServe failure can never lose the upload.
    """
    if not images:
        raise ValidationError("choose at least one image")
    unknown = sorted(set(model_names) - set(settings.PORTAL_MODELS))
    if unknown or not model_names:
        raise ValidationError(f"unknown model(s): {', '.join(unknown) or '(none chosen)'}")
    written: list[str] = []
    try:
        for item in images:
            written.append(storage.save("images", item.data, item.extension))
        with transaction.atomic():
            created: list[Image] = []
            analysis_ids: list[int] = []
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
            record(
                "image.upload",
                actor=actor,
                obj=specimen,
                request=request,
                data={
                    "images": [{"id": i.pk, "name": i.original_name, "sha256": i.sha256} for i in created],
                    "models": list(model_names),
                },
            )
            transaction.on_commit(lambda: dispatch(analysis_ids))
    except BaseException:
        for name in written:
            storage.delete(name)
        raise
    return created


def dispatch(analysis_ids: Iterable[int]) -> None:
    """Start inference for freshly committed analyses, per settings.PORTAL_INFERENCE_MODE.

    inline: in this thread, now (the request waits); background: a one-thread executor in this
    process (the page refreshes until done); off: leave them to ``retry_pending``.
    """
    ids = list(analysis_ids)
    mode = settings.PORTAL_INFERENCE_MODE
    if mode == "inline":
        process_analyses(ids)
    elif mode == "background":
        global _executor
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="portal-inference")
        _executor.submit(_background_job, ids)


def _background_job(ids: list[int]) -> None:
    close_old_connections()
    try:
        process_analyses(ids)
    except Exception:  # the retry loop picks the rows up again
        log.exception("background inference failed")
    finally:
        connections.close_all()


def wait_for_background() -> None:
    """Block until queued background inference has finished (tests, shutdown)."""
    global _executor
    if _executor is not None:
        _executor.shutdown(wait=True)
        _executor = None


def _claim(analysis_id: int) -> bool:
    """Take a short lease on an analysis, so two workers never run it at once."""
    now = timezone.now()
    with transaction.atomic():
        claimed = (
            Analysis.objects.filter(pk=analysis_id, status__in=[Analysis.Status.PENDING, Analysis.Status.FAILED])
            .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
            .update(locked_until=now + timedelta(seconds=LOCK_SECONDS))
        )
    return claimed == 1


def process_analyses(analysis_ids: Iterable[int], client: TorchServeClient | None = None) -> dict[str, int]:
    """Run each analysis against TorchServe; returns a count per resulting status."""
    client = client or TorchServeClient()
    counts: dict[str, int] = {}
    for analysis_id in analysis_ids:
        status = process_analysis(analysis_id, client)
        if status:
            counts[status] = counts.get(status, 0) + 1
    return counts


def process_analysis(analysis_id: int, client: TorchServeClient | None = None) -> str | None:
    """Call TorchServe for one analysis (no transaction is open during the call) and store the outcome.

    Returns the new status, or None when another worker holds it or it is no longer runnable.
    """
    if not _claim(analysis_id):
        return None
    client = client or TorchServeClient()
    analysis = Analysis.objects.select_related("image").get(pk=analysis_id)
    try:
        data = storage.read(analysis.image.storage_name)
    except OSError as exc:
        return store_outcome(analysis_id, ServerError(f"stored image unreadable: {exc}"), None)
    outcome = client.predict(analysis.model_name, data)
    explanation = None
    if isinstance(outcome, Prediction):
        explanation = client.explain(analysis.model_name, data)
    return store_outcome(analysis_id, outcome, explanation)


def store_outcome(analysis_id: int, outcome: Any, explanation: Any) -> str:
    heatmap_name = ""
    if isinstance(explanation, Explanation):
        heatmap_name = storage.save("heatmaps", explanation.overlay_png, "png")
    try:
        with transaction.atomic():
            analysis = Analysis.objects.select_for_update().get(pk=analysis_id)
            analysis.locked_until = None
            now = timezone.now()
            if isinstance(outcome, Prediction):
                body = outcome.body
                analysis.status = Analysis.Status.DONE
                analysis.model_version = str(body.get("version", ""))[:20]
                label = str(body.get("label") or "")
                analysis.label = label if label in CLASS_LABELS else ""
                analysis.confidence = _float(body.get("confidence"))
                analysis.probabilities = {k: float(v) for k, v in dict(body.get("probabilities", {})).items()}
                analysis.malignant_probability = _float(body.get("malignant_probability"))
                analysis.abstained = bool(body.get("abstained", False))
                analysis.quality = dict(body.get("quality") or {})
                analysis.timing_ms = dict(body.get("timing_ms") or {})
                analysis.latency_ms = round(outcome.latency_ms, 1)
                analysis.error_code = ""
                analysis.error_message = ""
                if isinstance(explanation, Explanation):
                    analysis.heatmap_name = heatmap_name
                    analysis.heatmap_label = explanation.label[:10]
                elif explanation is not None:
                    analysis.error_message = f"heatmap unavailable: {getattr(explanation, 'message', explanation)}"
                analysis.completed_at = now
                action, data = (
                    "analysis.complete",
                    {"label": analysis.label, "abstained": analysis.abstained, "version": analysis.model_version},
                )
            elif isinstance(outcome, Refusal):
                analysis.status = Analysis.Status.REJECTED
                analysis.error_code = outcome.code
                analysis.error_message = outcome.message
                analysis.completed_at = now
                action, data = "analysis.reject", {"code": outcome.code, "message": outcome.message}
            elif isinstance(outcome, Unreachable):
                analysis.status = Analysis.Status.PENDING
                analysis.error_code = "unreachable"
                analysis.error_message = outcome.message
                analysis.save()
                return analysis.status
            else:
                analysis.attempts += 1
                analysis.status = Analysis.Status.FAILED
                analysis.error_code = "server_error"
                analysis.error_message = outcome.message
                action, data = "analysis.fail", {"error": outcome.message, "attempt": analysis.attempts}
            analysis.save()
            record(
                action,
                actor=None,
                obj=analysis,
                data={"image_id": analysis.image_id, "model": analysis.model_name, **data},
            )
            return analysis.status
    except BaseException:
        if heatmap_name:
            storage.delete(heatmap_name)
        raise


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def retry_pending(limit: int | None = None, client: TorchServeClient | None = None) -> dict[str, int]:
    """Run every pending analysis, and failed ones with attempts left; returns counts per new status."""
    runnable = (
        Analysis.objects.filter(
            Q(status=Analysis.Status.PENDING)
            | Q(status=Analysis.Status.FAILED, attempts__lt=settings.PORTAL_MAX_ATTEMPTS)
        )
        .order_by("created_at", "id")
        .values_list("id", flat=True)
    )
    ids = list(runnable[:limit] if limit else runnable)
    return process_analyses(ids, client=client)


# --- review -------------------------------------------------------------------------------------


def sign_off(
    actor: User,
    analysis: Analysis,
    *,
    decision: str,
    final_label: str | None = None,
    comment: str = "",
    request: HttpRequest | None = None,
) -> Review:
    """A reviewer agrees with the model's label or reclassifies it; the analysis is then immutable."""
    if isinstance(actor, AnonymousUser) or not actor.has_perm("analyses.sign_off_analysis"):
        raise PermissionDenied("only reviewers can sign off")
    if decision not in Review.Decision.values:
        raise ValidationError(f"unknown decision {decision!r}")
    with transaction.atomic():
        analysis = Analysis.objects.select_for_update().get(pk=analysis.pk)
        if Review.objects.filter(analysis=analysis).exists():
            raise ImmutableError("this analysis is already signed off")
        if analysis.status != Analysis.Status.DONE:
            raise ValidationError("only completed analyses can be signed off")
        if decision == Review.Decision.AGREE:
            if not analysis.label or analysis.abstained:
                raise ValidationError("the model abstained: reclassify with a label instead of agreeing")
            final = analysis.label
        else:
            if final_label not in CLASS_LABELS:
                raise ValidationError("choose the class for the reclassification")
            if not comment.strip():
                raise ValidationError("a reclassification needs a comment")
            final = str(final_label)
        review = Review.objects.create(
            analysis=analysis,
            reviewer=actor,
            reviewer_name=actor.get_username(),
            decision=decision,
            final_label=final,
            comment=comment.strip(),
        )
        record(
            "analysis.sign_off",
            actor=actor,
            obj=analysis,
            request=request,
            data={
                "decision": decision,
                "model_label": analysis.label,
                "final_label": final,
                "comment": review.comment,
            },
        )
    return review
