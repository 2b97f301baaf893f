"""Cell pages: the specimen's differential with its gallery, reclassifying a cell, crops, annotated images.

Every page and file is permission-checked and audited like the rest of the portal; reclassifying goes
through portal.actions.cells.reclassify_cell (refused once a reviewer signed the frame off).
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from portal.actions.cells import reclassify_cell
from portal.actions.events import log_event, refusal_reason
from portal.analyses.cell_review import crop_png, differential_context
from portal.analyses.differential import Differential, describe
from portal.analyses.models import Cell, CellAnalysis, ImmutableError
from portal.analyses.reports import differential_csv_bytes
from portal.analyses.views import CSV, _private_file, download
from portal.patients.models import Specimen

__all__ = ["annotated_file", "cell_crop", "differential_csv", "reclassify", "specimen_differential_page"]


@permission_required(["analyses.view_cell", "patients.view_specimen"], raise_exception=True)
def specimen_differential_page(request: HttpRequest, pk: int) -> HttpResponse:
    specimen = get_object_or_404(Specimen.objects.select_related("patient"), pk=pk)
    context = differential_context(specimen)
    diff = context["diff"]
    assert isinstance(diff, Differential)
    log_event("specimen.differential", actor=request.user, obj=specimen, request=request, data=diff.as_dict())
    context["can_reclassify"] = request.user.has_perm("analyses.reclassify_cell")
    return render(request, "analyses/differential.html", context)


@permission_required("analyses.export_analyses", raise_exception=True)
def differential_csv(request: HttpRequest, pk: int) -> HttpResponse:
    """The differential (per type: count, percent of white cells, NRBC per 100 WBC), then every cell."""
    specimen = get_object_or_404(Specimen.objects.select_related("patient"), pk=pk)
    body = differential_csv_bytes(specimen)
    log_event("export.differential_csv", actor=request.user, obj=specimen, request=request)
    return download(body, CSV, f"differential_{specimen.accession}.csv")


@permission_required("analyses.reclassify_cell", raise_exception=True)
@require_POST
def reclassify(request: HttpRequest, pk: int) -> HttpResponse:
    cell = get_object_or_404(Cell.objects.select_related("image"), pk=pk)
    label = request.POST.get("label", "")
    # the cell as the image page's table numbers it (#1 is the model's first cell of the frame)
    name = f"Cell #{cell.index + 1} of {cell.image.original_name}"
    try:
        reclassify_cell(request.user, cell, label, request=request)
        messages.success(request, f"{name}: now {describe(label)}.")
    except (ValidationError, ImmutableError) as exc:
        messages.error(request, f"{name}: not reclassified: {refusal_reason(exc)}")
    target = reverse("analyses:differential", args=[cell.image.specimen_id])
    if request.POST.get("next") == "image":
        target = reverse("analyses:image", args=[cell.image_id])
    return redirect(f"{target}#cell-{cell.pk}")


@permission_required(["analyses.view_cell", "analyses.view_image"], raise_exception=True)
def cell_crop(request: HttpRequest, pk: int) -> HttpResponse:
    cell = get_object_or_404(Cell.objects.select_related("image", "cell_analysis"), pk=pk)
    try:
        png = crop_png(cell)
    except (OSError, ValueError) as exc:
        raise Http404("the original image is missing") from exc
    response = HttpResponse(png, content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600"
    return response


@permission_required(["analyses.view_cellanalysis", "analyses.view_image"], raise_exception=True)
def annotated_file(request: HttpRequest, pk: int) -> FileResponse:
    """The cell model's own annotated image of a frame (boxes, outlines, labels as the model drew them)."""
    job = get_object_or_404(CellAnalysis, image_id=pk)
    if not job.annotated_name:
        raise Http404("no annotated image for this frame")
    return _private_file(job.annotated_name, "image/png")
