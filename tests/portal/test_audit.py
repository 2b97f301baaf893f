"""Audit log: append-only, survives user deletion, read-only in admin, auth events logged."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from portal.actions.events import log_event
from portal.actions.patients import create_patient, update_patient
from portal.audit.log import record
from portal.audit.models import AppendOnlyError, AuditEvent
from tests.portal.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_rows_cannot_be_changed_or_deleted(technologist: Any) -> None:
    event = record("patient.view", actor=technologist, object_type="patient", object_id="1")
    event.action = "patient.edit"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(action="x")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(pk=event.pk).action == "patient.view"


def test_unregistered_action_is_refused() -> None:
    with pytest.raises(ValueError):
        record("patient.teleport")


def test_rows_survive_user_deletion(make_user: Any) -> None:
    user = make_user("leaver", "technologist")
    event = record("patient.view", actor=user, object_type="patient", object_id="7")
    user.delete()
    event = AuditEvent.objects.get(pk=event.pk)
    assert event.actor_id is None and event.actor_username == "leaver"


def test_login_logout_and_failed_login_are_logged(technologist: Any) -> None:
    client = Client()
    client.post("/accounts/login/", {"username": "tech", "password": "wrong"})
    client.post("/accounts/login/", {"username": "tech", "password": PASSWORD})
    client.post("/accounts/logout/")
    assert list(AuditEvent.objects.order_by("id").values_list("action", flat=True)) == [
        "user.login_failed",
        "user.login",
        "user.logout",
    ]
    assert AuditEvent.objects.filter(ip_address="127.0.0.1").count() == 3


def test_admin_shows_the_log_read_only(admin_client: Client, technologist: Any) -> None:
    event = record("patient.view", actor=technologist, object_type="patient", object_id="1", object_repr="P")
    assert admin_client.get("/admin/audit/auditevent/").status_code == 200
    assert admin_client.get("/admin/audit/auditevent/add/").status_code == 403
    assert admin_client.get(f"/admin/audit/auditevent/{event.pk}/delete/").status_code == 403
    page = admin_client.get(f"/admin/audit/auditevent/{event.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content
    response = admin_client.post(f"/admin/audit/auditevent/{event.pk}/change/", {"action": "patient.edit"})
    assert response.status_code == 403
    assert AuditEvent.objects.get(pk=event.pk).action == "patient.view"


def test_write_and_audit_row_commit_together(technologist: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the audit row cannot be written, the change is rolled back too (one transaction)."""
    from portal.actions import patients
    from portal.patients.models import Patient

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("audit store down")

    monkeypatch.setattr(patients, "record", broken)
    with pytest.raises(RuntimeError):
        create_patient(technologist, {"mrn": "RB1", "name": "Rolled Back", "date_of_birth": "2001-01-01"})
    assert not Patient.objects.filter(mrn="RB1").exists()


def test_portal_audit_page_needs_the_permission_and_filters(
    make_user: Any, tech_client: Client, specimen: Any, patient: Any
) -> None:
    from tests.portal.conftest import login

    assert tech_client.get("/audit/").status_code == 403
    auditor = login(make_user("auditor", "admin"))
    page = auditor.get(f"/audit/?object_type=patient&object_id={patient.pk}").content.decode()
    rows = page.split("<tbody>")[1]
    assert 'title="patient.create"' in rows and "MRN0001" in rows
    assert 'title="specimen.create"' not in rows
    assert 'title="specimen.create"' in auditor.get("/audit/?action=specimen.create").content.decode()


def test_audit_page_filters_by_date_hides_views_and_shows_readable_data(
    admin_client: Client, technologist: Any, patient: Any
) -> None:
    from django.utils import timezone

    update_patient(technologist, patient, {"name": "Ada King"})
    log_event("patient.view", actor=technologist, obj=patient)
    today = timezone.localdate().isoformat()
    page = admin_client.get(f"/audit/?start={today}&end={today}").content.decode()
    rows = page.split("<tbody>")[1]
    assert "changes.name: Ada Lovelace → Ada King" in rows and "{&#x27;changes&#x27;" not in rows
    assert 'title="patient.view"' in rows
    changes = admin_client.get(f"/audit/?start={today}&changes_only=1").content.decode().split("<tbody>")[1]
    assert "changes.name: Ada Lovelace → Ada King" in changes and 'title="patient.view"' not in changes
    assert "Ada King" not in admin_client.get("/audit/?end=2001-01-01").content.decode()


def test_changes_only_hides_every_read_and_keeps_changes_exports_and_refusals(
    admin_client: Client, technologist: Any, patient: Any
) -> None:
    from portal.audit.registry import ACTIONS, READS

    reads = {"export.report_html", "specimen.differential", "analysis.worklist", "patient.search", "image.view"}
    assert reads <= READS
    kept = {"patient.create", "image.upload", "image.upload_refused", "export.csv", "export.report_pdf"}
    assert not kept & READS and kept <= set(ACTIONS)
    for action in sorted(reads | kept):
        log_event(action, actor=technologist, obj=patient)
    page = admin_client.get("/audit/?changes_only=1").content.decode().split("<tbody>")[1]
    for action in reads:
        assert f'title="{action}"' not in page, action
    for action in kept:
        assert f'title="{action}"' in page, action
