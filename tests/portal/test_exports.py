"""Exports: CSV for a date range, printable HTML report, PDF report; all audited; no CDN anywhere."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from portal.actions.signoff import sign_off
from portal.actions.uploads import upload_images
from portal.analyses.models import Analysis
from portal.analyses.validation import validate_image_bytes
from portal.audit.models import AuditEvent
from tests.portal.conftest import smear_paths
from tests.portal.helpers import complete

pytestmark = pytest.mark.django_db


@pytest.fixture
def done(technologist: Any, reviewer: Any, specimen: Any) -> list[Analysis]:
    """One image signed off (its one model said Early), one still pending."""
    first, second = (
        upload_images(technologist, specimen, [validate_image_bytes(p.name, p.read_bytes())], [model])[0]
        for p, model in zip(smear_paths(2), ["xception_bigru", "mobilenetv3_lstm"], strict=True)
    )
    a, b = first.analyses.get(), second.analyses.get()
    complete(a, "Early")
    sign_off(reviewer, first, decision="agree")
    return [a, b]


def test_csv_export_for_a_date_range(rev_client: Client, done: list[Analysis]) -> None:
    today = timezone.now().date()
    response = rev_client.get(f"/exports/?start={today - timedelta(days=1)}&end={today}")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert len(rows) == 2
    signed = next(r for r in rows if r["status"] == "done")
    assert (signed["label"], signed["image_final_label"], signed["final_label"], signed["reviewer"]) == (
        "Early",
        "Early",
        "Early",
        "rev",
    )
    assert signed["patient_mrn"] == "MRN0001"
    assert next(r for r in rows if r["status"] == "pending")["label"] == ""
    empty = rev_client.get(f"/exports/?start={today + timedelta(days=1)}&end={today + timedelta(days=2)}")
    assert len(list(csv.reader(io.StringIO(empty.content.decode())))) == 1
    event = AuditEvent.objects.filter(action="export.csv").order_by("id").first()
    assert event.data["rows"] == 2 and event.actor_username == "rev"
    bad = rev_client.get(f"/exports/?start={today}&end={today - timedelta(days=3)}")
    assert bad.status_code == 200 and b"start date is after" in bad.content


def test_printable_and_pdf_report(rev_client: Client, done: list[Analysis], specimen: Any) -> None:
    html = rev_client.get(f"/specimens/{specimen.pk}/report/").content.decode()
    assert "Decision support only" in html and "MRN0001" in html and "Final: Early, signed off by rev" in html
    assert "data-sign-off" not in html  # no sign-off form on the report
    assert f"/images/{done[0].image_id}/file/" in html  # the original image is on the printable report too
    pdf = rev_client.get(f"/specimens/{specimen.pk}/report.pdf")
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF") and len(pdf.content) > 1500
    # the image and each model's heatmap are in it, and its pages are numbered
    n_pictures = 1 + sum(1 for a in done if a.heatmap_name)
    assert pdf.content.count(b"/Subtype /Image") >= n_pictures, pdf.content.count(b"/Subtype /Image")
    assert set(AuditEvent.objects.filter(object_type="specimen").values_list("action", flat=True)) >= {
        "export.report_html",
        "export.report_pdf",
    }


def test_no_cdn_in_templates_or_static() -> None:
    portal = Path(__file__).resolve().parents[2] / "portal"
    for path in [*portal.rglob("*.html"), *portal.rglob("*.css"), *portal.rglob("*.js")]:
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, path
