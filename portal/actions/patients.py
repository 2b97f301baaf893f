"""Patients and specimens: created and edited with their field-level changes audited."""

from __future__ import annotations

from typing import Any, TypeVar

from django.db import models, transaction
from django.http import HttpRequest

from portal.actions.events import User
from portal.audit.log import record
from portal.patients.models import Patient, Specimen

__all__ = ["create_patient", "create_specimen", "update_patient", "update_specimen"]


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
