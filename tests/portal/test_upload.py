"""Uploads: validation, private storage with random names, rows committed as pending before inference."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image as PILImage

from portal.analyses.models import Analysis, Image
from portal.audit.models import AuditEvent
from tests.portal.conftest import PASSWORD, login, smear_paths

pytestmark = pytest.mark.django_db


def _files(paths: list[Path]) -> list[SimpleUploadedFile]:
    return [SimpleUploadedFile(p.name, p.read_bytes(), content_type="image/jpeg") for p in paths]


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (w, h), (200, 100, 150)).save(buf, "PNG")
    return buf.getvalue()


def test_five_real_images_with_all_models_are_saved_as_pending(tech_client: Client, specimen: Any) -> None:
    paths = smear_paths(5)
    response = tech_client.post("/upload/", {"specimen": specimen.pk, "model": "all", "images": _files(paths)})
    assert response.status_code == 302, response.content.decode()[:2000]
    images = list(Image.objects.filter(specimen=specimen).order_by("id"))
    assert [i.original_name for i in images] == [p.name for p in paths]
    assert Analysis.objects.filter(image__in=images, status="pending").count() == 5 * len(settings.PORTAL_MODELS)
    storage = Path(settings.PORTAL_STORAGE_DIR)
    for image, path in zip(images, paths, strict=True):
        stored = storage / image.storage_name
        assert stored.read_bytes() == path.read_bytes()
        assert re.fullmatch(r"images/[0-9a-f]{32}\.jpg", image.storage_name)
        assert path.stem not in image.storage_name
        # Served only through the authenticated view, with the right type.
        response = tech_client.get(f"/images/{image.pk}/file/")
        assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
        assert b"".join(response.streaming_content) == path.read_bytes()
    assert not str(storage).startswith(str(settings.STATIC_ROOT))
    event = AuditEvent.objects.get(action="image.upload")
    assert len(event.data["images"]) == 5 and event.data["models"] == settings.PORTAL_MODELS


def test_one_model_only(tech_client: Client, specimen: Any) -> None:
    tech_client.post(
        "/upload/", {"specimen": specimen.pk, "model": "mobilenetv3_lstm", "images": _files(smear_paths(1))}
    )
    assert list(Analysis.objects.values_list("model_name", flat=True)) == ["mobilenetv3_lstm"]


@pytest.mark.parametrize(
    ("name", "payload", "message"),
    [
        ("notes.jpg", b"this is not an image", "not an image the models can read"),
        ("tiny.png", None, "too small"),
        ("truncated.jpg", "truncated", "corrupt or truncated"),
        ("empty.jpg", b"", "empty"),
    ],
)
def test_a_bad_file_is_refused_with_its_reason_and_the_good_ones_are_saved(
    tech_client: Client, specimen: Any, name: str, payload: Any, message: str
) -> None:
    good = smear_paths(2)
    if payload is None:
        payload = _png(20, 20)
    elif payload == "truncated":
        payload = good[0].read_bytes()[:5000]
    files = [*_files(good), SimpleUploadedFile(name, payload, content_type="image/jpeg")]
    response = tech_client.post("/upload/", {"specimen": specimen.pk, "model": "all", "images": files})
    # the good files are saved and queued; the page comes back (after a redirect: a reload saves nothing twice)
    assert response.status_code == 302 and response["Location"] == f"/upload/?specimen={specimen.pk}&model=all"
    assert sorted(Image.objects.values_list("original_name", flat=True)) == sorted(p.name for p in good)
    assert Analysis.objects.count() == 2 * len(settings.PORTAL_MODELS)
    page = tech_client.get(response["Location"]).content.decode()
    refused = page[page.index('id="refused-files"') :]
    assert "1 file not saved" in refused and name in refused and message in refused
    assert f'<option value="{specimen.pk}" selected>' in page  # the specimen is still chosen
    for image in Image.objects.all():
        assert f'href="/images/{image.pk}/">{image.original_name}</a>' in page
    assert 'id="refused-files"' not in tech_client.get(response["Location"]).content.decode()  # shown once
    # the refusal is audited: which file and why, beside the accepted upload
    event = AuditEvent.objects.get(action="image.upload_refused")
    assert event.object_id == str(specimen.pk) and event.actor_username == "tech"
    assert [f["name"] for f in event.data["files"]] == [name] and message in event.data["files"][0]["reason"]
    assert len(AuditEvent.objects.get(action="image.upload").data["images"]) == 2


def test_when_every_file_is_refused_nothing_is_saved_and_each_is_listed(tech_client: Client, specimen: Any) -> None:
    files = [
        SimpleUploadedFile("notes.jpg", b"this is not an image", content_type="image/jpeg"),
        SimpleUploadedFile("tiny.png", _png(20, 20), content_type="image/png"),
    ]
    response = tech_client.post("/upload/", {"specimen": specimen.pk, "model": "mobilenetv3_lstm", "images": files})
    page = response.content.decode()
    assert response.status_code == 200
    assert "notes.jpg: not an image the models can read" in page and "tiny.png: too small" in page
    assert f'<option value="{specimen.pk}" selected>' in page and '<option value="mobilenetv3_lstm" selected>' in page
    assert Image.objects.count() == 0 and Analysis.objects.count() == 0
    storage = Path(settings.PORTAL_STORAGE_DIR) / "images"
    assert not storage.exists() or not any(storage.iterdir())
    event = AuditEvent.objects.get(action="image.upload_refused")
    assert [f["name"] for f in event.data["files"]] == ["notes.jpg", "tiny.png"]
    assert [f["code"] for f in event.data["files"]] == ["not_an_image", "image_too_small"]


def test_a_file_over_the_size_limit_says_the_limit(tech_client: Client, specimen: Any, settings: Any) -> None:
    path = smear_paths(1)[0]
    settings.PORTAL_MAX_UPLOAD_BYTES = 2**20
    big = SimpleUploadedFile("big.png", _png(800, 800) + b"\0" * (2**20 + 60_000), content_type="image/png")
    response = tech_client.post("/upload/", {"specimen": specimen.pk, "model": "all", "images": [*_files([path]), big]})
    assert response.status_code == 302
    page = tech_client.get(response["Location"]).content.decode()
    assert "big.png: the file is 1.1 MB, over the size limit of 1 MB." in page
    assert Image.objects.get().original_name == path.name
    # sizes that read the same in MB are given in bytes
    from portal.analyses.validation import over_the_limit_text

    assert over_the_limit_text("a.png", 2**20 + 1, 2**20) == (
        "a.png: the file is 1,048,577 bytes, over the size limit of 1 MB (1,048,576 bytes)."
    )
    assert AuditEvent.objects.get(action="image.upload_refused").data["files"][0]["code"] == "image_too_large"


def _too_many(settings: Any) -> list[SimpleUploadedFile]:
    data = smear_paths(1)[0].read_bytes()
    return [SimpleUploadedFile(f"f{i}.jpg", data) for i in range(settings.PORTAL_MAX_FILES_PER_UPLOAD + 1)]


def _as_a_browser(client: Client) -> Client:
    """CSRF checks on, with the cookie a browser has from the page: the CSRF middleware reads the body
    first, before any view or permission check, and meets the refusal there (as in a browser)."""
    client.cookies["csrftoken"] = "a" * 32
    return client


def test_too_many_files_is_a_form_error_on_the_upload_page(technologist: Any, specimen: Any, settings: Any) -> None:
    """Django stops reading at PORTAL_MAX_FILES_PER_UPLOAD files (DATA_UPLOAD_MAX_NUMBER_FILES): the upload
    page comes back with the error beside the images, not a separate "could not be used" page."""
    tech_client = _as_a_browser(login(technologist, enforce_csrf_checks=True))
    files = _too_many(settings)
    response = tech_client.post(f"/upload/?specimen={specimen.pk}", {"specimen": specimen.pk, "images": files})
    page = response.content.decode()
    assert response.status_code == 400 and "<h1>Upload smear images</h1>" in page
    assert "The request could not be used" not in page
    assert f"At most {settings.PORTAL_MAX_FILES_PER_UPLOAD} images per upload: nothing was saved." in page
    assert f'<option value="{specimen.pk}" selected>' in page
    assert Image.objects.count() == 0
    event = AuditEvent.objects.get(action="image.upload_refused")
    assert event.data == {"reason": "too_many_files", "limit": settings.PORTAL_MAX_FILES_PER_UPLOAD}


def test_unknown_model_is_refused(tech_client: Client, specimen: Any) -> None:
    response = tech_client.post(
        "/upload/", {"specimen": specimen.pk, "model": "resnet", "images": _files(smear_paths(1))}
    )
    assert response.status_code == 200 and Image.objects.count() == 0


def test_rows_and_jobs_are_committed_before_the_model_server_is_called(
    tech_client: Client, specimen: Any, settings: Any
) -> None:
    """The model server is down: the upload is accepted with a queued job per analysis; the jobs wait."""
    from portal import jobs

    settings.TORCHSERVE_URL = "http://127.0.0.1:9"  # discard port: connection refused
    response = tech_client.post("/upload/", {"specimen": specimen.pk, "model": "all", "images": _files(smear_paths(2))})
    assert response.status_code == 302
    analyses = Analysis.objects.all()
    assert analyses.count() == 2 * len(settings.PORTAL_MODELS)
    assert {(a.status, a.stage) for a in analyses} == {("pending", "queued")}
    assert jobs.queued_analysis_ids() == {a.pk for a in analyses}  # committed together with the rows
    counts = jobs.run_queued(max_jobs=analyses.count())
    assert counts == {"pending": analyses.count()}
    for a in Analysis.objects.all():
        assert (a.status, a.stage, a.error_code, a.attempts) == ("pending", "waiting", "unreachable", 0)
        assert a.waiting_since is not None and a.next_attempt_at is not None
    assert jobs.queued_analysis_ids() == {a.pk for a in analyses}  # each wait queued its retry
    page = tech_client.get(f"/images/{Image.objects.first().pk}/").content.decode()
    assert "Waiting for the model server since" in page and "portal/progress.js" in page
    progress = tech_client.get(f"/images/{Image.objects.first().pk}/progress/").json()
    assert progress["final"] is False and {p["stage"] for p in progress["analyses"]} == {"waiting"}


def test_upload_needs_permission(norole: Any, specimen: Any) -> None:
    from tests.portal.conftest import login

    client = login(norole)
    response = client.post("/upload/", {"specimen": specimen.pk, "model": "all", "images": _files(smear_paths(1))})
    assert response.status_code == 403 and Image.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_commit_that_fails_with_the_connection_keeps_the_files(
    technologist: Any, specimen: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database committed but the answer was lost (a restart): the rows exist, so must their files."""
    from django.db import OperationalError, connection

    from portal import jobs
    from portal.actions.uploads import upload_images
    from portal.analyses import storage
    from portal.analyses.validation import validate_image_bytes

    real_commit = connection.commit

    def commit_then_lose_the_connection() -> None:
        real_commit()
        raise OperationalError(2013, "Lost connection to server during query")

    monkeypatch.setattr(connection, "commit", commit_then_lose_the_connection)
    path = smear_paths(1)[0]
    with pytest.raises(OperationalError):
        upload_images(technologist, specimen, [validate_image_bytes(path.name, path.read_bytes())], ["xception_bigru"])
    monkeypatch.undo()
    image = Image.objects.get()  # committed
    assert storage.read(image.storage_name) == path.read_bytes()  # and its file is still there
    assert jobs.sweep(orphan_grace_s=0)["orphans_removed"] == 0


def test_too_many_files_shows_the_upload_form_only_to_whom_the_page_would(
    norole: Any, reviewer: Any, specimen: Any, settings: Any
) -> None:
    """The refusal comes before the login and second-factor checks: the form (with its list of specimens
    and patients) is shown only to a user the upload page itself would serve."""
    password_only = Client(enforce_csrf_checks=True)
    assert password_only.login(username=reviewer.username, password=PASSWORD)  # no second-factor code given
    for client in (login(norole, enforce_csrf_checks=True), password_only, Client(enforce_csrf_checks=True)):
        response = _as_a_browser(client).post("/upload/", {"specimen": specimen.pk, "images": _too_many(settings)})
        page = response.content.decode()
        assert response.status_code == 400 and "Upload smear images" not in page and "Ada Lovelace" not in page
        assert "Too many files in one upload" in page
    assert not AuditEvent.objects.filter(action="image.upload_refused").exists()
