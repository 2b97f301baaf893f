"""Specimen pages: the summary with its one conclusion and the specimen's sign-off; adding a missed cell;
the summary and cells CSV files.

Permission-checked and audited like every page; writes go through portal.actions.cells and
portal.actions.specimen (one transaction with the audit row; refusals audited too).
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from core.registry import CELL_CLASSES
from portal.actions import cells as cell_actions
from portal.actions.events import log_event, refusal_reason
from portal.actions.specimen import log_summary_read, sign_off_specimen
from portal.analyses.conclusion import CHECKS, SpecimenConclusion, class_description
from portal.analyses.differential import BLAST_THRESHOLD_PERCENT, describe
from portal.analyses.models import CLASS_LABELS, Image, ImmutableError, SpecimenReview
from portal.analyses.reports import cells_csv_bytes, summary_csv_bytes
from portal.analyses.specimen_summary import signed_review, specimen_conclusion
from portal.analyses.views import CSV, download
from portal.patients.models import Specimen

__all__ = ["AddCellForm", "SpecimenSignOffForm", "add_cell", "cells_csv", "sign_off", "summary", "summary_csv"]


class SpecimenSignOffForm(forms.Form):
    """Agree with the specimen's conclusion, or set its class; the interpretive comment is always required."""

    decision = forms.ChoiceField(choices=SpecimenReview.Decision.choices, widget=forms.RadioSelect)
    final_label = forms.ChoiceField(
        choices=[("", "(choose a class)"), *[(c, class_description(c)) for c in CLASS_LABELS]],
        required=False,
        label="Specimen class",
    )
    comment = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        label="Interpretive comment",
        help_text="Required: what you conclude and why (it goes into the report, the PDF and FHIR).",
    )

    def __init__(self, *args: object, conclusion_label: str | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if conclusion_label is None:  # a referral: setting the class is the only choice
            field = self.fields["decision"]
            assert isinstance(field, forms.ChoiceField)
            field.choices = [c for c in SpecimenReview.Decision.choices if c[0] != SpecimenReview.Decision.AGREE]
            self.initial.setdefault("decision", SpecimenReview.Decision.RECLASSIFY)


class AddCellForm(forms.Form):
    """A cell the model missed: its box in image pixels (the page fills it by dragging on the frame) and type."""

    x0 = forms.IntegerField(min_value=0)
    y0 = forms.IntegerField(min_value=0)
    x1 = forms.IntegerField(min_value=0)
    y1 = forms.IntegerField(min_value=0)
    label = forms.ChoiceField(choices=[(c, describe(c)) for c in CELL_CLASSES])


def _summary_context(
    request: HttpRequest, specimen: Specimen, form: SpecimenSignOffForm | None = None
) -> dict[str, object]:
    """The summary page's context; ``form``: a refused sign-off form, shown as the reviewer left it."""
    conclusion = specimen_conclusion(specimen)
    review = signed_review(specimen)
    unsigned = [f for f in conclusion.frames if f.evidence.has_result and f.source != "signed"]
    return {
        "specimen": specimen,
        "conclusion": conclusion,
        "diff": conclusion.differential,
        "progress": conclusion.progress,
        "review": review,
        "checks_known": CHECKS,
        "threshold": BLAST_THRESHOLD_PERCENT,
        "unsigned_frames": unsigned,
        "frames": conclusion.frames,
        "signed_frames": sum(1 for f in conclusion.frames if f.source == "signed"),
        "can_sign": request.user.has_perm("analyses.sign_off_analysis"),
        "ready_to_sign": review is None and not unsigned and not conclusion.pending and bool(conclusion.frames),
        "form": form or SpecimenSignOffForm(conclusion_label=conclusion.label),
    }


@permission_required(["patients.view_specimen", "analyses.view_analysis", "analyses.view_cell"], raise_exception=True)
def summary(request: HttpRequest, pk: int) -> HttpResponse:
    specimen = get_object_or_404(Specimen.objects.select_related("patient"), pk=pk)
    context = _summary_context(request, specimen)
    conclusion = context["conclusion"]
    assert isinstance(conclusion, SpecimenConclusion)
    log_summary_read(request.user, specimen, conclusion, request)
    return render(request, "analyses/specimen_summary.html", context)


def _refused(request: HttpRequest, specimen: Specimen, form: SpecimenSignOffForm, reason: str) -> HttpResponse:
    """A refused sign-off: the summary page again (400) with the form exactly as the reviewer left it
    (choice, class, comment) and each error beside its field, never a fresh form to fill in again."""
    messages.error(request, f"Not signed: {reason.rstrip('.')}.")
    return render(request, "analyses/specimen_summary.html", _summary_context(request, specimen, form), status=400)


@permission_required("analyses.sign_off_analysis", raise_exception=True)
@require_POST
def sign_off(request: HttpRequest, pk: int) -> HttpResponse:
    specimen = get_object_or_404(Specimen, pk=pk)
    conclusion = specimen_conclusion(specimen)
    form = SpecimenSignOffForm(request.POST, conclusion_label=conclusion.label)
    target = reverse("analyses:specimen_summary", args=[specimen.pk])
    if not form.is_valid():
        errors = "; ".join(f"{field}: {' '.join(str(m) for m in found)}" for field, found in form.errors.items())
        return _refused(request, specimen, form, errors)
    try:
        review = sign_off_specimen(
            request.user,
            specimen,
            decision=form.cleaned_data["decision"],
            final_label=form.cleaned_data["final_label"] or None,
            comment=form.cleaned_data["comment"],
            request=request,
        )
    except (ValidationError, ImmutableError) as exc:
        form.add_error(None, refusal_reason(exc))
        return _refused(request, specimen, form, refusal_reason(exc))
    messages.success(request, f"Specimen {specimen.accession}: signed off as {class_description(review.final_label)}.")
    return redirect(target)


@permission_required("analyses.reclassify_cell", raise_exception=True)
@require_POST
def add_cell(request: HttpRequest, pk: int) -> HttpResponse:
    image = get_object_or_404(Image, pk=pk)
    form = AddCellForm(request.POST)
    target = reverse("analyses:image", args=[image.pk]) + "#cells"
    if not form.is_valid():
        messages.error(request, "Cell not added: draw its box on the frame (or give x0, y0, x1, y1) and choose a type.")
        return redirect(target)
    data = form.cleaned_data
    try:
        cell = cell_actions.add_cell(
            request.user, image, [data["x0"], data["y0"], data["x1"], data["y1"]], data["label"], request=request
        )
    except (ValidationError, ImmutableError, PermissionDenied) as exc:
        messages.error(request, f"Cell not added: {refusal_reason(exc)}.")
        return redirect(target)
    messages.success(
        request, f"Cell #{cell.index + 1} added as {describe(cell.final_label)}: it counts in the differential."
    )
    return redirect(reverse("analyses:image", args=[image.pk]) + f"#cell-{cell.pk}")


@permission_required("analyses.export_analyses", raise_exception=True)
def summary_csv(request: HttpRequest, pk: int) -> HttpResponse:
    """The specimen's conclusion and sign-off, one row."""
    specimen = get_object_or_404(Specimen.objects.select_related("patient"), pk=pk)
    body = summary_csv_bytes(specimen)
    log_event("export.summary_csv", actor=request.user, obj=specimen, request=request)
    return download(body, CSV, f"summary_{specimen.accession}.csv")


@permission_required("analyses.export_analyses", raise_exception=True)
def cells_csv(request: HttpRequest, pk: int) -> HttpResponse:
    """Every cell of the specimen, one row each."""
    specimen = get_object_or_404(Specimen.objects.select_related("patient"), pk=pk)
    body = cells_csv_bytes(specimen)
    log_event("export.cells_csv", actor=request.user, obj=specimen, request=request)
    return download(body, CSV, f"cells_{specimen.accession}.csv")
