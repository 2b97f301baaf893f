"""Patients and specimens: search, create, edit, view (views are audited)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from portal.actions.events import log_event
from portal.actions.patients import create_patient, create_specimen, update_patient, update_specimen
from portal.patients.forms import PatientForm, SpecimenForm
from portal.patients.models import Patient, Specimen

PAGE_SIZE = 20


@permission_required("patients.view_patient", raise_exception=True)
def patient_list(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    patients = Patient.objects.annotate(n_specimens=Count("specimens"))
    if query:
        patients = patients.filter(Q(mrn__icontains=query) | Q(name__icontains=query))
    page = Paginator(patients.order_by("name", "mrn"), PAGE_SIZE).get_page(request.GET.get("page"))
    log_event(
        "patient.search",
        actor=request.user,
        request=request,
        object_type="patient",
        data={"q": query[:100], "page": page.number, "ids": [p.pk for p in page]},
    )
    return render(request, "patients/patient_list.html", {"page": page, "q": query})


@permission_required("patients.add_patient", raise_exception=True)
@require_http_methods(["GET", "POST"])
def patient_create(request: HttpRequest) -> HttpResponse:
    form = PatientForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        patient = create_patient(request.user, form.cleaned_data, request=request)
        messages.success(request, f"Patient {patient} created.")
        return redirect(patient)
    return render(request, "patients/patient_form.html", {"form": form, "title": "New patient"})


@permission_required("patients.change_patient", raise_exception=True)
@require_http_methods(["GET", "POST"])
def patient_edit(request: HttpRequest, pk: int) -> HttpResponse:
    patient = get_object_or_404(Patient, pk=pk)
    form = PatientForm(request.POST or None, instance=patient)
    if request.method == "POST" and form.is_valid():
        patient = update_patient(request.user, Patient.objects.get(pk=pk), form.cleaned_data, request=request)
        messages.success(request, "Patient saved.")
        return redirect(patient)
    return render(request, "patients/patient_form.html", {"form": form, "title": f"Edit {patient}"})


@permission_required("patients.view_patient", raise_exception=True)
def patient_detail(request: HttpRequest, pk: int) -> HttpResponse:
    patient = get_object_or_404(Patient, pk=pk)
    log_event("patient.view", actor=request.user, obj=patient, request=request)
    specimens = patient.specimens.annotate(n_images=Count("images"))
    return render(request, "patients/patient_detail.html", {"patient": patient, "specimens": specimens})


@permission_required("patients.add_specimen", raise_exception=True)
@require_http_methods(["GET", "POST"])
def specimen_create(request: HttpRequest, patient_pk: int) -> HttpResponse:
    patient = get_object_or_404(Patient, pk=patient_pk)
    form = SpecimenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        specimen = create_specimen(request.user, patient, form.cleaned_data, request=request)
        messages.success(request, f"{specimen} created for {patient}.")
        return redirect(specimen)
    return render(request, "patients/specimen_form.html", {"form": form, "patient": patient, "title": "New specimen"})


@permission_required("patients.change_specimen", raise_exception=True)
@require_http_methods(["GET", "POST"])
def specimen_edit(request: HttpRequest, pk: int) -> HttpResponse:
    specimen = get_object_or_404(Specimen, pk=pk)
    form = SpecimenForm(request.POST or None, instance=specimen)
    if request.method == "POST" and form.is_valid():
        specimen = update_specimen(request.user, Specimen.objects.get(pk=pk), form.cleaned_data, request=request)
        messages.success(request, "Specimen saved.")
        return redirect(specimen)
    return render(
        request, "patients/specimen_form.html", {"form": form, "patient": specimen.patient, "title": f"Edit {specimen}"}
    )


@permission_required("patients.view_specimen", raise_exception=True)
def specimen_detail(request: HttpRequest, pk: int) -> HttpResponse:
    specimen = get_object_or_404(Specimen.objects.select_related("patient"), pk=pk)
    log_event("specimen.view", actor=request.user, obj=specimen, request=request)
    images = specimen.images.prefetch_related("analyses", "analyses__review").select_related("cell_analysis")
    pending = (
        specimen.images.filter(analyses__status="pending").exists()
        or specimen.images.filter(cell_analysis__status="pending").exists()
    )
    return render(
        request, "patients/specimen_detail.html", {"specimen": specimen, "images": images, "pending": pending}
    )
