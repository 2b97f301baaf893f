"""What users read: confirmations, the inactive-account message, styled error pages, refusal texts, favicon."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from portal.actions.outcomes import store_outcome
from portal.actions.uploads import upload_images
from portal.analyses.inference import Refusal
from portal.analyses.validation import validate_image_bytes
from tests.portal.conftest import PASSWORD, smear_paths

pytestmark = pytest.mark.django_db


def test_an_account_waiting_for_approval_is_told_so(make_user: Any) -> None:
    make_user("newcomer", is_active=False)
    page = Client().post("/accounts/login/", {"username": "newcomer", "password": PASSWORD}).content.decode()
    assert "waiting for an administrator" in page
    wrong = Client().post("/accounts/login/", {"username": "newcomer", "password": "not-it"}).content.decode()
    assert "waiting for an administrator" not in wrong and "correct username and password" in wrong


def test_creating_a_patient_and_a_specimen_is_confirmed(tech_client: Client) -> None:
    data = {"mrn": "MRN-9", "name": "Ada Lovelace", "date_of_birth": "1990-12-10", "sex": "F"}
    page = tech_client.post("/patients/new/", data, follow=True).content.decode()
    assert "Patient Ada Lovelace (MRN MRN-9) created." in page
    patient_url = tech_client.get("/patients/?q=MRN-9").content.decode()
    assert "Ada Lovelace" in patient_url


def test_styled_error_pages_and_api_docs_login(tech_client: Client, norole: Any) -> None:
    from tests.portal.conftest import login

    missing = tech_client.get("/images/999999/")
    assert missing.status_code == 404 and "There is nothing at this address" in missing.content.decode()
    assert 'class="top"' in missing.content.decode()  # the portal's layout, not a bare page
    denied = login(norole).get("/upload/")
    assert denied.status_code == 403 and "does not allow this page" in denied.content.decode()
    docs = Client().get("/api/docs/")
    assert docs.status_code == 302 and "/accounts/login/" in docs["Location"]
    assert tech_client.get("/api/docs/").status_code == 200


def test_favicon() -> None:
    response = Client().get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("favicon.svg")
    assert Client().get(response["Location"]).status_code == 200


def test_an_image_refused_by_every_model_is_one_clear_message(
    technologist: Any, specimen: Any, tech_client: Client, settings: Any
) -> None:
    path = smear_paths(1)[0]
    (image,) = upload_images(
        technologist, specimen, [validate_image_bytes(path.name, path.read_bytes())], list(settings.PORTAL_MODELS)
    )
    for a in image.analyses.all():
        store_outcome(a.pk, Refusal("not_a_blood_smear", "smear score 0.02 < threshold 0.50"))
    page = tech_client.get(f"/images/{image.pk}/").content.decode()
    assert page.count("does not look like a stained peripheral blood smear") == 1
    assert "All 4 models refused it" in page and "not_a_blood_smear" not in page and "v?" not in page
    assert 'id="consensus"' not in page  # no empty consensus box beside the refusal
