"""The reviewer's worklist (images awaiting sign-off, oldest first), export defaults, PDF download."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from portal.actions.signoff import sign_off
from portal.actions.uploads import upload_images
from portal.audit.models import AuditEvent
from tests.portal.conftest import smear_paths, validated
from tests.portal.helpers import complete

pytestmark = pytest.mark.django_db


def _images(technologist: Any, specimen: Any, n: int) -> list[Any]:
    return upload_images(technologist, specimen, validated(smear_paths(n)), ["xception_bigru"])


def test_worklist_lists_unsigned_results_oldest_first(
    technologist: Any, reviewer: Any, specimen: Any, rev_client: Client, tech_client: Client
) -> None:
    first, second, pending = _images(technologist, specimen, 3)
    for image in (second, first):
        complete(image.analyses.get(), "Pre")
    page = rev_client.get("/worklist/").content.decode()
    assert page.index(first.original_name) < page.index(second.original_name)  # oldest first
    assert pending.original_name not in page  # nothing to sign yet
    dashboard = rev_client.get("/").content.decode()
    assert '<a href="/worklist/">2</a>' in dashboard  # images awaiting sign-off, not model results
    sign_off(reviewer, first, decision="agree")
    page = rev_client.get("/worklist/").content.decode()
    assert first.original_name not in page and second.original_name in page
    assert second.original_name not in rev_client.get("/worklist/?q=NO-SUCH-MRN").content.decode()
    assert second.original_name in rev_client.get(f"/worklist/?q={specimen.patient.mrn[-3:]}").content.decode()
    today = timezone.localdate().isoformat()
    assert second.original_name in rev_client.get(f"/worklist/?date={today}").content.decode()
    assert second.original_name not in rev_client.get("/worklist/?date=2001-01-01").content.decode()
    dashboard = rev_client.get("/").content.decode()
    assert 'href="/worklist/"' in dashboard
    assert tech_client.get("/worklist/").status_code == 403  # technologists do not sign off
    assert AuditEvent.objects.filter(action="analysis.worklist").exists()


def test_export_dates_default_to_the_last_30_days_and_the_pdf_can_be_downloaded(
    rev_client: Client, specimen: Any
) -> None:
    page = rev_client.get("/exports/").content.decode()
    assert f'value="{timezone.localdate().isoformat()}"' in page
    inline = rev_client.get(f"/specimens/{specimen.pk}/report.pdf")
    download = rev_client.get(f"/specimens/{specimen.pk}/report.pdf?download=1")
    assert inline["Content-Disposition"].startswith("inline")
    assert download["Content-Disposition"].startswith("attachment") and download.content.startswith(b"%PDF")


def test_refused_actions_leave_an_audit_row(
    technologist: Any, reviewer: Any, specimen: Any, tech_client: Client, rev_client: Client
) -> None:
    (image,) = _images(technologist, specimen, 1)
    complete(image.analyses.get(), "Pre")
    # a technologist tries to sign off: on the page and through the API
    assert tech_client.post(f"/images/{image.pk}/sign-off/", {"decision": "agree"}).status_code == 403
    assert tech_client.post("/api/reviews/", {"image": image.pk, "decision": "agree"}).status_code == 403
    denied = AuditEvent.objects.filter(action="access.denied", actor_username="tech")
    assert {e.data["path"] for e in denied} == {f"/images/{image.pk}/sign-off/", "/api/reviews/"}
    # a reviewer signs, then tries to sign the same image again
    rev_client.post(f"/images/{image.pk}/sign-off/", {"decision": "agree", "recorded_label": "Pre"})
    rev_client.post(
        f"/images/{image.pk}/sign-off/",
        {"decision": "reclassify", "final_label": "Pro", "comment": "x", "recorded_label": "Pro"},
    )
    refused = AuditEvent.objects.get(action="image.sign_off_refused")
    assert refused.actor_username == "rev" and "already signed" in refused.data["reason"]
