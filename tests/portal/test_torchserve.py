"""The portal against a real TorchServe (started through handlers.serve): every state, retries, nothing lost."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as dj_settings
from django.core.management import call_command
from django.test import Client
from PIL import Image as PILImage

from portal import actions
from portal.analyses import storage
from portal.analyses.models import Analysis, Image
from portal.analyses.validation import validate_image_bytes
from portal.audit.models import AuditEvent
from tests.conftest import free_ports
from tests.portal.conftest import smear_paths

pytestmark = [pytest.mark.django_db, pytest.mark.integration, pytest.mark.slow]


def _validated(paths: list[Path]) -> list[Any]:
    return [validate_image_bytes(p.name, p.read_bytes()) for p in paths]


def test_all_four_models_answer_with_probabilities_and_heatmaps(
    use_torchserve: Any,
    technologist: Any,
    specimen: Any,
    tech_client: Client,
    django_capture_on_commit_callbacks: Any,
    settings: Any,
) -> None:
    settings.PORTAL_INFERENCE_MODE = "inline"
    with django_capture_on_commit_callbacks(execute=True):
        (image,) = actions.upload_images(
            technologist, specimen, _validated(smear_paths(1)), list(dj_settings.PORTAL_MODELS)
        )
    analyses = list(image.analyses.all())
    assert len(analyses) == 4
    for a in analyses:
        assert a.status == "done", (a.model_name, a.error_message)
        assert a.model_version and set(a.probabilities) == {"Benign", "Early", "Pre", "Pro"}
        assert sum(a.probabilities.values()) == pytest.approx(1.0, abs=1e-3)
        assert a.abstained or a.label in a.probabilities
        assert a.latency_ms and a.latency_ms > 0
        assert storage.read(a.heatmap_name).startswith(b"\x89PNG")
    page = tech_client.get(f"/images/{image.pk}/").content.decode()
    assert page.count('aria-label="calibrated probabilities"') == 4 and page.count('class="heatmap"') == 4
    assert AuditEvent.objects.filter(action="analysis.complete").count() == 4


def test_refusal_becomes_rejected_and_unknown_model_failed(
    use_torchserve: Any, technologist: Any, specimen: Any, settings: Any
) -> None:
    settings.PORTAL_MIN_IMAGE_SIDE = 16  # let a 32 px image through the portal so the handler judges it
    settings.PORTAL_MODELS = ["mobilenetv3_lstm", "no_such_model"]
    buf = io.BytesIO()
    PILImage.new("RGB", (32, 32), (128, 0, 128)).save(buf, "PNG")
    (small,) = actions.upload_images(
        technologist, specimen, [validate_image_bytes("small.png", buf.getvalue())], ["mobilenetv3_lstm"]
    )
    (real,) = actions.upload_images(technologist, specimen, _validated(smear_paths(1)), ["no_such_model"])
    counts = actions.retry_pending()
    assert counts == {"rejected": 1, "failed": 1}
    rejected = small.analyses.get()
    assert (rejected.status, rejected.error_code) == ("rejected", "image_too_small")
    assert "64" in rejected.error_message
    failed = real.analyses.get()
    assert failed.status == "failed" and "HTTP 404" in failed.error_message and failed.attempts == 1
    # Failed analyses are retried up to PORTAL_MAX_ATTEMPTS, then left alone; rejected ones never.
    for _ in range(5):
        actions.retry_pending()
    failed.refresh_from_db()
    assert failed.attempts == dj_settings.PORTAL_MAX_ATTEMPTS
    assert Analysis.objects.get(pk=rejected.pk).status == "rejected"


def test_upload_while_torchserve_is_down_is_completed_by_the_retry(
    model_store: Path,
    technologist: Any,
    specimen: Any,
    settings: Any,
    tmp_path: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from handlers.serve import start, stop

    ports = free_ports()
    settings.TORCHSERVE_URL = f"http://127.0.0.1:{ports['inference']}"
    settings.TORCHSERVE_WORKDIR = str(tmp_path / "ts")
    settings.PORTAL_INFERENCE_MODE = "inline"
    settings.PORTAL_MODELS = ["mobilenetv3_lstm"]
    paths = smear_paths(5)
    with django_capture_on_commit_callbacks(execute=True):
        images = actions.upload_images(technologist, specimen, _validated(paths), ["mobilenetv3_lstm"])
    assert [a.status for a in Analysis.objects.all()] == ["pending"] * 5
    assert all(a.error_code == "unreachable" for a in Analysis.objects.all())
    info = start(model_store, models=["mobilenetv3_lstm"], workdir=tmp_path / "ts", ports=ports)
    try:
        call_command("retry_pending")
    finally:
        stop(info=info)
    analyses = list(Analysis.objects.order_by("image_id"))
    assert [a.status for a in analyses] == ["done"] * 5
    assert Image.objects.count() == 5
    for image, path in zip(images, paths, strict=True):
        assert storage.read(image.storage_name) == path.read_bytes()  # nothing lost or altered


@pytest.mark.django_db(transaction=True)
def test_background_worker_completes_an_upload_after_the_response(
    use_torchserve: Any, tech_client: Client, specimen: Any, settings: Any
) -> None:
    """The mode `make run` uses: the request returns at once with pending rows; a worker thread finishes them."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.PORTAL_INFERENCE_MODE = "background"
    path = smear_paths(1)[0]
    response = tech_client.post(
        "/upload/",
        {
            "specimen": specimen.pk,
            "model": "mobilenetv3_lstm",
            "images": [SimpleUploadedFile(path.name, path.read_bytes())],
        },
    )
    assert response.status_code == 302
    actions.wait_for_background()
    analysis = Analysis.objects.get()
    assert analysis.status == "done" and analysis.heatmap_name
    page = tech_client.get(response["Location"]).content.decode()
    assert 'http-equiv="refresh"' not in page and "mobilenetv3_lstm" in page


def test_timeout_becomes_failed_and_is_retried(
    use_torchserve: Any, technologist: Any, specimen: Any, settings: Any
) -> None:
    settings.TORCHSERVE_READ_TIMEOUT_S = 0.001  # the real server cannot answer this fast
    (image,) = actions.upload_images(technologist, specimen, _validated(smear_paths(1)), ["xception_bigru"])
    assert actions.retry_pending() == {"failed": 1}
    analysis = image.analyses.get()
    assert "timed out" in analysis.error_message and analysis.attempts == 1
    settings.TORCHSERVE_READ_TIMEOUT_S = 120
    assert actions.retry_pending() == {"done": 1}
    analysis.refresh_from_db()
    assert analysis.status == "done" and analysis.error_message == ""


def test_client_with_a_stale_key_rereads_the_key_file(use_torchserve: Any) -> None:
    """TorchServe refuses a stale key with 400 InvalidKeyException; the client re-reads the key file once."""
    from portal.analyses.inference import Prediction, TorchServeClient

    client = TorchServeClient(key="stale-key-from-before-a-restart")
    outcome = client.predict("mobilenetv3_lstm", smear_paths(1)[0].read_bytes())
    assert isinstance(outcome, Prediction), outcome
    assert client.key == use_torchserve.inference_key
