"""REST API: token auth, patients/specimens, upload, reviews, schema and vendored docs."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from portal.accounts.second_factor import needs_second_factor
from portal.analyses.models import Analysis, Image, ImageReview
from portal.audit.models import AuditEvent
from tests.portal.conftest import PASSWORD, login, otp_code, otp_device, smear_paths
from tests.portal.helpers import complete

pytestmark = pytest.mark.django_db


def _token_client(user: Any) -> APIClient:
    """A token from the endpoint; reviewers and admins add the code of an enrolled app (test_otp.py)."""
    credentials = {"username": user.username, "password": PASSWORD}
    if needs_second_factor(user):
        credentials["otp"] = otp_code(otp_device(user))
    response = APIClient().post("/api/auth/token/", credentials)
    assert response.status_code == 200
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
    return client


def test_token_auth_patient_crud_and_search(technologist: Any) -> None:
    client = _token_client(technologist)
    assert AuditEvent.objects.filter(action="api.token", actor=technologist).exists()
    response = client.post(
        "/api/patients/",
        {"mrn": "API1", "name": "Api Person", "date_of_birth": "1999-09-09", "sex": "M"},
        format="json",
    )
    assert response.status_code == 201, response.content
    pid = response.json()["id"]
    dup = client.post("/api/patients/", {"mrn": "API1", "name": "Dup", "date_of_birth": "1999-09-09"}, format="json")
    assert dup.status_code == 409 and dup.json()["code"] == "conflict" and "MRN" in dup.json()["detail"]
    assert client.patch(f"/api/patients/{pid}/", {"name": "Api P. Person"}, format="json").status_code == 200
    assert client.get("/api/patients/?q=api1").json()["results"][0]["name"] == "Api P. Person"
    assert client.get(f"/api/patients/{pid}/").status_code == 200
    assert client.delete(f"/api/patients/{pid}/").status_code in (403, 405)
    actions_ = set(AuditEvent.objects.filter(object_type="patient").values_list("action", flat=True))
    assert actions_ == {"patient.create", "patient.edit", "patient.view", "patient.search"}
    listed = AuditEvent.objects.get(action="patient.search")
    assert listed.data == {"query": {"q": "api1"}, "ids": [pid]} and listed.actor_username == "tech"
    assert APIClient().get("/api/patients/").status_code == 401
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert bad.get("/api/patients/").status_code == 401


def test_upload_and_review_through_the_api(technologist: Any, reviewer: Any, specimen: Any) -> None:
    tech = _token_client(technologist)
    paths = smear_paths(2)
    with paths[0].open("rb") as f0, paths[1].open("rb") as f1:
        response = tech.post(
            "/api/analyses/", {"specimen": specimen.pk, "model": "all", "images": [f0, f1]}, format="multipart"
        )
    assert response.status_code == 201, response.content
    images = response.json()
    assert len(images) == 2 and all(len(i["analyses"]) == 4 for i in images)
    assert {a["status"] for i in images for a in i["analyses"]} == {"pending"}
    bad = tech.post("/api/analyses/", {"specimen": specimen.pk, "images": [_fake_file()]}, format="multipart")
    assert bad.status_code == 400 and "not an image the models can read" in str(bad.json())
    analysis = complete(Analysis.objects.get(pk=images[0]["analyses"][0]["id"]), "Pro")
    got = tech.get(f"/api/analyses/{analysis.pk}/").json()
    assert got["label"] == "Pro" and got["heatmap_url"] == f"/analyses/{analysis.pk}/heatmap.png"
    image_id = images[0]["id"]
    assert tech.post("/api/reviews/", {"image": image_id, "decision": "agree"}, format="json").status_code == 403
    rev = _token_client(reviewer)
    running = rev.post("/api/reviews/", {"image": image_id, "decision": "agree"}, format="json")
    assert running.status_code == 400 and "still running" in str(running.json())  # three models still pending
    for other in Analysis.objects.filter(image_id=image_id).exclude(pk=analysis.pk):
        complete(other, "Pro")
    response = rev.post("/api/reviews/", {"image": image_id, "decision": "agree", "comment": "ok"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["final_label"], body["consensus_label"], len(body["evidence"])) == ("Pro", "Pro", 4)
    assert rev.post("/api/reviews/", {"image": image_id, "decision": "agree"}, format="json").status_code == 409
    assert ImageReview.objects.get().final_label == "Pro"
    assert tech.get("/api/reviews/").json()["count"] == 1
    # every analysis of the image now shows the image's final label first
    assert tech.get(f"/api/analyses/{analysis.pk}/").json()["image_review"]["final_label"] == "Pro"


def _fake_file() -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("x.jpg", b"not an image", content_type="image/jpeg")


def test_schema_and_docs_use_vendored_assets(tech_client: Client) -> None:
    schema = tech_client.get("/api/schema/")
    assert schema.status_code == 200 and b"/api/analyses/" in schema.content and b"/api/reviews/" in schema.content
    docs = tech_client.get("/api/docs/").content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in docs
    assert "cdn" not in docs.lower() and "https://" not in docs
    # No ReDoc page: its template loads Google Fonts.
    assert tech_client.get("/api/redoc/").status_code == 404


def test_too_many_files_in_one_upload_is_a_json_400(technologist: Any, specimen: Any, settings: Any) -> None:
    """Django refuses the 21st file before any view runs; the API client still gets JSON, not a page."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=technologist)
    path = smear_paths(1)[0]
    files = [
        SimpleUploadedFile(f"f{i}.jpg", path.read_bytes()) for i in range(settings.PORTAL_MAX_FILES_PER_UPLOAD + 1)
    ]
    response = Client().post(
        "/api/analyses/",
        {"specimen": specimen.pk, "model": "all", "images": files},
        HTTP_AUTHORIZATION=f"Token {token.key}",
    )
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    assert response.json()["code"] == "too_many_files" and "20" in response.json()["detail"]
    assert Image.objects.count() == 0


def test_every_images_consensus_is_on_the_api_as_the_portal_shows_it(
    technologist: Any, reviewer: Any, specimen: Any
) -> None:
    """GET /api/images/ and /api/images/{id}/: label or refer, method, reason (code and words), members; a
    model's out-of-distribution abstention refers the image there as on the page."""
    from portal.actions.outcomes import store_outcome
    from portal.analyses.consensus import consensus
    from tests.portal.helpers import prediction

    paths = smear_paths(2)
    client = _token_client(technologist)
    with paths[0].open("rb") as f0, paths[1].open("rb") as f1:
        uploaded = client.post(
            "/api/analyses/", {"specimen": specimen.pk, "model": "all", "images": [f0, f1]}, format="multipart"
        ).json()
    assert [i["consensus"] for i in uploaded] == [None, None]  # nothing finished yet
    first, second = (Image.objects.get(pk=i["id"]) for i in uploaded)
    for a in first.analyses.all():
        complete(a, "Pro")
    for k, a in enumerate(second.analyses.order_by("model_name")):
        answer = prediction("Early", confidence=0.95)
        if k == 0:
            answer = prediction("Early", confidence=0.95, abstained=True)
            answer.body.update(abstain_reason="out_of_distribution")
        store_outcome(a.pk, answer)

    got = client.get(f"/api/images/{first.pk}/")
    assert got.status_code == 200, got.content
    c = got.json()["consensus"]
    shown = consensus(list(first.analyses.all()))
    assert shown is not None and (c["label"], c["refer"], c["method"]) == (shown.label, False, shown.method) == (
        "Pro",
        False,
        "majority vote",  # the helper's answers carry version 1.0, not the ensemble's members' versions
    )
    assert (c["reason"], c["reason_text"], c["agreement"], c["votes"], c["answered"]) == (
        None,
        "",
        "4 of 4",
        {"Pro": 4},
        4,
    )
    assert AuditEvent.objects.filter(action="image.view", object_id=str(first.pk)).exists()

    c = client.get(f"/api/images/{second.pk}/").json()["consensus"]
    assert (c["label"], c["refer"], c["reason"], c["abstained"]) == (None, True, "out_of_distribution", 1)
    assert "out of distribution" in c["reason_text"]
    page = login(reviewer).get(f"/images/{second.pk}/").content.decode()
    assert c["reason_text"] in page and "unlike the images the model learned from" in page  # the model's card too

    listed = client.get(f"/api/images/?specimen={specimen.pk}").json()
    assert {r["id"]: r["consensus"]["reason"] for r in listed["results"]} == {
        first.pk: None,
        second.pk: "out_of_distribution",
    }
    schema = client.get("/api/schema/").content.decode()
    assert "/api/images/{id}/" in schema and "Consensus" in schema and "out_of_distribution" in schema
