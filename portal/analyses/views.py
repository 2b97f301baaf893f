"""Dashboard, upload, results (side by side with consensus), review worklist, private files, exports."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portal.actions import signoff
from portal.actions.events import log_event
from portal.actions.uploads import upload_images
from portal.analyses import storage
from portal.analyses.cell_review import differential_context
from portal.analyses.consensus import consensus
from portal.analyses.differential import differential
from portal.analyses.forms import ExportForm, ReviewForm, UploadForm, too_many_files_text
from portal.analyses.models import (
    CELL_LABEL_CHOICES,
    REVIEWED_LABEL_CHOICES,
    Analysis,
    CellAnalysis,
    Image,
    ImmutableError,
    QueuedJob,
)
from portal.analyses.reports import analyses_in_range, csv_bytes, sign_off_text
from portal.analyses.templatetags.portal_labels import class_name
from portal.analyses.validation import megabytes
from portal.patients.models import Specimen


def dashboard(request: HttpRequest) -> HttpResponse:
    context: dict[str, object] = {}
    if request.user.has_perm("analyses.view_analysis"):
        context["counts"] = dict(Analysis.objects.values_list("status").annotate(n=Count("id")).order_by())
        context["recent"] = Image.objects.select_related("specimen__patient").prefetch_related("analyses")[:10]
        context["unsigned"] = awaiting_sign_off().count()
    return render(request, "analyses/dashboard.html", context)


def about(request: HttpRequest) -> HttpResponse:
    """The models this portal runs and the data sets they were built from, with the credits their licences ask for."""
    context = {
        "models": settings.PORTAL_MODELS,
        "cell_model": settings.PORTAL_CELL_MODEL,
        "cell_types": [label for _, label in CELL_LABEL_CHOICES],
    }
    return render(request, "analyses/about.html", context)


def awaiting_sign_off() -> Any:
    """Images ready for a reviewer's decision: every model finished, at least one with a result, not signed
    (nor signed per model before per-image sign-off existed)."""
    return (
        Image.objects.filter(analyses__status=Analysis.Status.DONE, review__isnull=True)
        .exclude(analyses__status=Analysis.Status.PENDING)
        .exclude(analyses__review__isnull=False)
        .distinct()
    )


@permission_required("analyses.sign_off_analysis", raise_exception=True)
def worklist(request: HttpRequest) -> HttpResponse:
    """Images awaiting sign-off, oldest first; filter by patient/specimen text and date."""
    images = awaiting_sign_off().select_related("specimen__patient").prefetch_related("analyses")
    images = images.order_by("uploaded_at", "id")
    query = request.GET.get("q", "").strip()
    if query:
        images = images.filter(
            Q(specimen__accession__icontains=query)
            | Q(specimen__patient__mrn__icontains=query)
            | Q(specimen__patient__name__icontains=query)
        )
    day = request.GET.get("date", "").strip()
    if day:
        try:
            images = images.filter(uploaded_at__date=datetime.date.fromisoformat(day))
        except ValueError:
            messages.error(request, f"Not a date: {day!r} (use YYYY-MM-DD).")
    page = Paginator(images, 25).get_page(request.GET.get("page"))
    rows: list[dict[str, Any]] = []
    for image in page:
        analyses = list(image.analyses.all())
        done = [a for a in analyses if a.status == Analysis.Status.DONE]
        rows.append({"image": image, "consensus": consensus(analyses), "done": done, "total": len(analyses)})
    log_event(
        "analysis.worklist",
        actor=request.user,
        request=request,
        object_type="image",
        data={"q": query[:100], "date": day[:10], "ids": [image.pk for image in page]},
    )
    return render(request, "analyses/worklist.html", {"page": page, "rows": rows, "q": query, "date": day})


UPLOAD_RESULT = "upload_result"  # session key: what the last partly refused upload saved and refused


@permission_required(["analyses.add_image", "analyses.add_analysis"], raise_exception=True)
@require_http_methods(["GET", "POST"])
def upload(request: HttpRequest) -> HttpResponse:
    """Upload images for a specimen. Each file is judged on its own: the good ones are saved (and analysed)
    even when others are refused; every refused file is listed with its reason and audited
    (image.upload_refused). When some were refused the page comes back (after a redirect, so a reload
    uploads nothing twice) with the specimen still chosen, what was saved and what was refused."""
    initial: dict[str, object] = {}
    if request.GET.get("specimen", "").isdigit():
        initial["specimen"] = int(request.GET["specimen"])
    if request.GET.get("model"):
        initial["model"] = request.GET["model"]  # a choice outside the list is simply not preselected
    form = UploadForm(request.POST or None, request.FILES or None, initial=initial)
    if request.method == "POST":
        valid = form.is_valid()
        specimen = form.cleaned_data.get("specimen")
        if form.refused or form.has_error("images", "too_many"):
            _audit_refused_upload(request, specimen, form)
        if valid:
            assert specimen is not None  # a valid form has one
            images = upload_images(
                request.user, specimen, form.cleaned_data["images"], form.model_names(), request=request
            )
            if form.refused:
                request.session[UPLOAD_RESULT] = {
                    "saved": [{"id": i.pk, "name": i.original_name} for i in images],
                    "refused": [{"name": r.name, "reason": r.reason} for r in form.refused],
                }
                query = urlencode({"specimen": specimen.pk, "model": form.cleaned_data["model"]})
                return redirect(f"{reverse('analyses:upload')}?{query}")
            messages.success(request, f"{len(images)} image(s) saved; analyses run on the model server.")
            if len(images) == 1:
                return redirect(images[0])
            return redirect(specimen)
    context = {"form": form, "result": request.session.pop(UPLOAD_RESULT, None) if request.method == "GET" else None}
    return render(request, "analyses/upload.html", {**context, **_upload_limits()})


def _upload_limits() -> dict[str, object]:
    return {
        "max_files": settings.PORTAL_MAX_FILES_PER_UPLOAD,
        "max_bytes": settings.PORTAL_MAX_UPLOAD_BYTES,
        "max_size": megabytes(settings.PORTAL_MAX_UPLOAD_BYTES),
    }


def _audit_refused_upload(request: HttpRequest, specimen: Specimen | None, form: UploadForm | None) -> None:
    """One audit row per refused upload attempt: which files were refused and why (nothing of them is kept)."""
    if form is not None and form.refused:
        data: dict[str, Any] = {"files": [r.as_audit() for r in form.refused]}
    else:
        data = {"reason": "too_many_files", "limit": settings.PORTAL_MAX_FILES_PER_UPLOAD}
    log_event("image.upload_refused", actor=request.user, obj=specimen, request=request, data=data)


def upload_too_many_files(request: HttpRequest) -> HttpResponse:
    """The upload page again, when Django refused the request for carrying more files than it reads
    (DATA_UPLOAD_MAX_NUMBER_FILES, before any view; portal.errors.bad_request sends it here): the form
    with the error, not a separate error page. The choices sent are lost with the request; the specimen
    of the page's address (?specimen=) is kept. The caller has checked what the page's own decorators and
    middleware would (portal.errors._is_upload_page)."""
    initial = {"specimen": int(request.GET["specimen"])} if request.GET.get("specimen", "").isdigit() else {}
    _audit_refused_upload(request, None, None)
    context = {"form": UploadForm(initial=initial), "upload_error": too_many_files_text(), **_upload_limits()}
    return render(request, "analyses/upload.html", context, status=400)


def _image_context(request: HttpRequest, image: Image, review_form: ReviewForm | None = None) -> dict[str, object]:
    """The image page's context; ``review_form``: a refused sign-off form, shown again as it was sent."""
    analyses = list(image.analyses.select_related("review").all())
    for a in analyses:
        a.signed = a.signed_review  # type: ignore[attr-defined]  # per-model sign-off of earlier versions
    codes = {a.error_code for a in analyses}
    refused_by_all = bool(analyses) and all(a.status == Analysis.Status.REJECTED for a in analyses) and len(codes) == 1
    cell_analysis = CellAnalysis.objects.filter(image=image).first()
    cells = list(image.cells.select_related("reviewed_by")) if cell_analysis else []
    image_review = image.signed_review
    legacy_review = next((a.signed for a in sorted(analyses, key=lambda a: a.pk) if a.signed), None)  # type: ignore[attr-defined]
    frame_review = image_review or legacy_review
    agreed = consensus(analyses)
    ready = bool(analyses) and all(a.is_final for a in analyses) and any(a.status == "done" for a in analyses)
    return {
        "image": image,
        "analyses": analyses,
        "refused": analyses[0].refusal_text if refused_by_all else "",
        "consensus": agreed,
        "image_review": image_review,
        "review_form": review_form or ReviewForm(consensus_label=agreed.label if agreed else None),
        "ready_to_sign": ready and frame_review is None,
        "pending": any(not a.is_final for a in analyses) or bool(cell_analysis and not cell_analysis.is_final),
        "can_sign": request.user.has_perm("analyses.sign_off_analysis"),
        "cell_analysis": cell_analysis,
        "cells": cells,
        "cell_counts": differential(cells) if cells else None,
        "frame_review": frame_review,
        "can_reclassify": request.user.has_perm("analyses.reclassify_cell") and frame_review is None,
        "cell_types": REVIEWED_LABEL_CHOICES,
    }


@permission_required(["analyses.view_image", "analyses.view_analysis"], raise_exception=True)
def image_detail(request: HttpRequest, pk: int) -> HttpResponse:
    image = get_object_or_404(Image.objects.select_related("specimen__patient"), pk=pk)
    log_event("image.view", actor=request.user, obj=image, request=request)
    return render(request, "analyses/image_detail.html", _image_context(request, image))


def progress_payload(analyses: list[Analysis], cell_analyses: Sequence[CellAnalysis] = ()) -> dict[str, object]:
    """Where each analysis is, for the live progress script (portal/static/portal/progress.js).

    A cell analysis's id is ``cells-<pk>``, so it never collides with an analysis's.
    """
    jobs: list[tuple[str, QueuedJob]] = [(str(a.pk), a) for a in analyses]
    jobs += [(f"cells-{c.pk}", c) for c in cell_analyses]
    return {
        "final": all(job.is_final for _, job in jobs),
        "analyses": [
            {
                "id": key,
                "model": job.model_name,
                "status": job.status,
                "stage": "" if job.is_final else job.stage,
                "text": job.progress_text(),
            }
            for key, job in jobs
        ],
    }


@permission_required(["analyses.view_image", "analyses.view_analysis"], raise_exception=True)
@never_cache
@require_GET
def image_progress(request: HttpRequest, pk: int) -> JsonResponse:
    image = get_object_or_404(Image, pk=pk)
    return JsonResponse(progress_payload(list(image.analyses.all()), list(CellAnalysis.objects.filter(image=image))))


@permission_required(["analyses.view_image", "analyses.view_analysis"], raise_exception=True)
@never_cache
@require_GET
def specimen_progress(request: HttpRequest, pk: int) -> JsonResponse:
    specimen = get_object_or_404(Specimen, pk=pk)
    return JsonResponse(
        progress_payload(
            list(Analysis.objects.filter(image__specimen=specimen)),
            list(CellAnalysis.objects.filter(image__specimen=specimen)),
        )
    )


@permission_required(["analyses.view_image"], raise_exception=True)
def image_file(request: HttpRequest, pk: int) -> FileResponse:
    image = get_object_or_404(Image, pk=pk)
    return _private_file(image.storage_name, image.content_type)


@permission_required(["analyses.view_analysis"], raise_exception=True)
def heatmap_file(request: HttpRequest, pk: int) -> FileResponse:
    analysis = get_object_or_404(Analysis, pk=pk)
    if not analysis.heatmap_name:
        raise Http404("no heatmap for this analysis")
    return _private_file(analysis.heatmap_name, "image/png")


#: the content type of every CSV export
CSV = "text/csv; charset=utf-8"


def download(body: bytes | str, content_type: str, filename: str, *, inline: bool = False) -> HttpResponse:
    """An export as a file (a download, or shown in the browser with ``inline``), never cached."""
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'{"inline" if inline else "attachment"}; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response


def _private_file(name: str, content_type: str) -> FileResponse:
    try:
        handle = open(storage.path_for(name), "rb")  # noqa: SIM115 (FileResponse closes it)
    except OSError as exc:
        raise Http404("file missing") from exc
    response = FileResponse(handle, content_type=content_type)
    response["Cache-Control"] = "private, no-store"
    response["Content-Disposition"] = "inline"
    return response


@permission_required(["analyses.view_analysis"], raise_exception=True)
def analysis_detail(request: HttpRequest, pk: int) -> HttpResponse:
    analysis = get_object_or_404(Analysis.objects.select_related("image__specimen__patient"), pk=pk)
    log_event("analysis.view", actor=request.user, obj=analysis, request=request)
    context = _image_context(request, analysis.image)
    context["analyses"] = [a for a in context["analyses"] if a.pk == analysis.pk]  # type: ignore[attr-defined]
    context["single"] = True
    return render(request, "analyses/image_detail.html", context)


@permission_required("analyses.sign_off_analysis", raise_exception=True)
@require_POST
def sign_off(request: HttpRequest, pk: int) -> HttpResponse:
    """The reviewer's decision on an image; then back to the worklist's next image, or to the image.

    A refused decision (incomplete, inconsistent, or refused by sign_off) is audited and the page
    comes back with the form exactly as it was sent and the errors beside the fields: never a fresh form
    that would let a second press record a default the reviewer did not choose.
    """
    image = get_object_or_404(Image.objects.select_related("specimen__patient"), pk=pk)
    agreed = consensus(list(image.analyses.all()))
    form = ReviewForm(request.POST, consensus_label=agreed.label if agreed else None)
    if not form.is_valid():
        reasons = [str(m) for errors in form.errors.values() for m in errors]
        log_event(
            "image.sign_off_refused",
            actor=request.user,
            obj=image,
            request=request,
            data={
                "decision": str(request.POST.get("decision", ""))[:20],
                "final_label": str(request.POST.get("final_label", ""))[:20],
                "expected_label": str(request.POST.get("recorded_label", ""))[:20],
                "reason": " ".join(reasons)[:500],
            },
        )
        return _refused(request, image, form, reasons)
    try:
        review = signoff.sign_off(
            request.user,
            image,
            decision=form.cleaned_data["decision"],
            final_label=form.cleaned_data["final_label"] or None,
            comment=form.cleaned_data["comment"],
            expected_label=form.cleaned_data["recorded_label"],
            request=request,
        )
    except (ValidationError, ImmutableError) as exc:
        reasons = [f"{m[:1].upper()}{m[1:]}." for m in _messages(exc)]
        form.add_error(None, reasons)
        return _refused(request, image, form, reasons)
    messages.success(request, f"{image.original_name}: signed off as {class_name(review.final_label)}.")
    following = awaiting_sign_off().filter(uploaded_at__gte=image.uploaded_at).exclude(pk=image.pk)
    after = following.order_by("uploaded_at", "id").first()
    if request.POST.get("next") == "worklist" and after is not None:
        return redirect(after)
    return redirect(image)


def _refused(request: HttpRequest, image: Image, form: ReviewForm, reasons: list[str]) -> HttpResponse:
    """The image page again, with the sign-off form as it was sent and why nothing was signed."""
    messages.error(request, f"Not signed: {' '.join(reasons)}")
    return render(request, "analyses/image_detail.html", _image_context(request, image, review_form=form))


def _messages(exc: Exception) -> list[str]:
    return list(exc.messages) if isinstance(exc, ValidationError) else [str(exc)]


@permission_required("analyses.export_analyses", raise_exception=True)
def export(request: HttpRequest) -> HttpResponse:
    today = timezone.localdate()
    form = ExportForm(request.GET or None, initial={"start": today - datetime.timedelta(days=30), "end": today})
    if request.GET and form.is_valid():
        start, end = form.cleaned_data["start"], form.cleaned_data["end"]
        rows = analyses_in_range(start, end)
        body = csv_bytes(rows)
        log_event(
            "export.csv",
            actor=request.user,
            request=request,
            object_type="analysis",
            data={"start": start.isoformat(), "end": end.isoformat(), "rows": rows.count()},
        )
        return download(body, CSV, f"analyses_{start}_{end}.csv")
    return render(request, "analyses/export.html", {"form": form})


@permission_required("analyses.export_analyses", raise_exception=True)
def specimen_report(request: HttpRequest, pk: int) -> HttpResponse:
    specimen = get_object_or_404(Specimen.objects.select_related("patient"), pk=pk)
    log_event("export.report_html", actor=request.user, obj=specimen, request=request)
    images = []
    for image in specimen.images.order_by("uploaded_at", "id"):
        ctx = _image_context(request, image)
        ctx["sign_off"] = sign_off_text(image, ctx["analyses"], ctx["consensus"])  # type: ignore[arg-type]
        images.append(ctx)
    context = {**differential_context(specimen), "images": images, "now": timezone.now()}
    return render(request, "analyses/report.html", context)


@permission_required("analyses.export_analyses", raise_exception=True)
def specimen_fhir(request: HttpRequest, pk: int) -> HttpResponse:
    """The specimen's results as a FHIR R4B Bundle (JSON), as a download."""
    import json

    from portal.analyses.fhir import specimen_bundle

    specimen = get_object_or_404(Specimen.objects.select_related("patient"), pk=pk)
    bundle = specimen_bundle(specimen)
    log_event("export.fhir", actor=request.user, obj=specimen, request=request, data={"entries": len(bundle["entry"])})
    return download(json.dumps(bundle, indent=1), "application/fhir+json", f"fhir_{specimen.accession}.json")


@permission_required("analyses.export_analyses", raise_exception=True)
def specimen_report_pdf(request: HttpRequest, pk: int) -> HttpResponse:
    specimen = get_object_or_404(Specimen.objects.select_related("patient"), pk=pk)
    if not request.user.is_authenticated:
        raise PermissionDenied
    from portal.analyses.pdf_report import build_pdf  # reportlab is imported only when a PDF is asked for

    pdf = build_pdf(specimen, request.user.get_username())
    log_event("export.report_pdf", actor=request.user, obj=specimen, request=request, data={"bytes": len(pdf)})
    return download(pdf, "application/pdf", f"report_{specimen.accession}.pdf", inline=not request.GET.get("download"))
