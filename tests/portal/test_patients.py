"""Patients and specimens: create, edit, search, paginate; every write and view audited."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from portal.actions.patients import create_patient
from portal.audit.models import AuditEvent
from portal.patients.models import Patient

pytestmark = pytest.mark.django_db


def test_create_edit_and_view_patient(tech_client: Client, technologist: Any) -> None:
    data = {"mrn": "M-100", "name": "Grace Hopper", "date_of_birth": "1985-12-09", "sex": "F"}
    response = tech_client.post("/patients/new/", data)
    patient = Patient.objects.get(mrn="M-100")
    assert response["Location"] == f"/patients/{patient.pk}/"
    assert patient.created_by == technologist
    response = tech_client.post(f"/patients/{patient.pk}/edit/", {**data, "name": "Grace B. Hopper"})
    assert response.status_code == 302
    patient.refresh_from_db()
    assert patient.name == "Grace B. Hopper"
    assert b"Grace B. Hopper" in tech_client.get(f"/patients/{patient.pk}/").content
    events = list(AuditEvent.objects.filter(object_type="patient", object_id=str(patient.pk)).order_by("id"))
    assert [e.action for e in events] == ["patient.create", "patient.edit", "patient.view"]
    assert events[1].data["changes"]["name"] == ["Grace Hopper", "Grace B. Hopper"]
    assert all(e.actor_username == "tech" and e.ip_address == "127.0.0.1" for e in events)


def test_duplicate_mrn_is_a_form_error_and_saves_nothing(tech_client: Client, patient: Any) -> None:
    before = AuditEvent.objects.count()
    data = {"mrn": patient.mrn, "name": "Someone Else", "date_of_birth": "2000-01-01", "sex": "M"}
    response = tech_client.post("/patients/new/", data)
    assert response.status_code == 200
    assert b"already exists" in response.content
    assert Patient.objects.count() == 1
    assert AuditEvent.objects.count() == before


def test_search_by_mrn_or_name_is_paginated(tech_client: Client, technologist: Any) -> None:
    for i in range(45):
        create_patient(technologist, {"mrn": f"S{i:03d}", "name": f"Smith {i:03d}", "date_of_birth": "1970-01-01"})
    create_patient(technologist, {"mrn": "Z999", "name": "Zed Jones", "date_of_birth": "1970-01-01"})
    page1 = tech_client.get("/patients/?q=smith").content.decode()
    assert "Page 1 of 3" in page1 and "Smith 000" in page1 and "Zed" not in page1
    page3 = tech_client.get("/patients/?q=smith&page=3").content.decode()
    assert "Smith 044" in page3 and "Smith 000" not in page3
    assert "Zed Jones" in tech_client.get("/patients/?q=Z999").content.decode()
    assert AuditEvent.objects.filter(action="patient.search", data__q="smith").count() == 2


def test_specimen_create_and_edit(tech_client: Client, patient: Any) -> None:
    data = {
        "accession": "ACC-77",
        "kind": "PB",
        "stain": "Giemsa",
        "collected_at": "2026-11-20T09:30",
        "collected_by": "ward 3",
        "notes": "fasting",
    }
    response = tech_client.post(f"/patients/{patient.pk}/specimens/new/", data)
    specimen = patient.specimens.get(accession="ACC-77")
    assert response["Location"] == f"/patients/specimens/{specimen.pk}/"
    tech_client.post(f"/patients/specimens/{specimen.pk}/edit/", {**data, "notes": "not fasting"})
    specimen.refresh_from_db()
    assert specimen.notes == "not fasting"
    page = tech_client.get(f"/patients/specimens/{specimen.pk}/").content.decode()
    assert "ACC-77" in page and "Upload images" in page
    actions_ = list(AuditEvent.objects.filter(object_type="specimen").values_list("action", flat=True))
    assert sorted(actions_) == ["specimen.create", "specimen.edit", "specimen.view"]


def test_mrn_and_name_search_by_substring(tech_client: Client, technologist: Any) -> None:
    create_patient(technologist, {"mrn": "MRN-2026-0042", "name": "Grace Hopper", "date_of_birth": "1960-01-01"})
    create_patient(technologist, {"mrn": "MRN-2026-0777", "name": "Alan Turing", "date_of_birth": "1960-01-01"})
    page = tech_client.get("/patients/?q=0042").content.decode()
    assert "Grace Hopper" in page and "Alan Turing" not in page
    assert "Alan Turing" in tech_client.get("/patients/?q=turin").content.decode()
    api = tech_client.get("/api/patients/?q=0042").json()
    assert [p["mrn"] for p in api["results"]] == ["MRN-2026-0042"]
