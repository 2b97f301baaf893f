"""The portal's jobs against a real TorchServe (serving.torchserve): every state, retries, nothing lost."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as dj_settings
from django.test import Client
from PIL import Image as PILImage

from portal import jobs
from portal.actions.uploads import upload_images
from portal.analyses import storage
from portal.analyses.models import Analysis, Image
from portal.analyses.validation import validate_image_bytes
from portal.audit.models import AuditEvent
from serving.torchserve import free_ports
from tests.portal.conftest import smear_paths, validated

pytestmark = [pytest.mark.django_db, pytest.mark.integration, pytest.mark.slow]


def test_all_four_models_answer_with_probabilities_and_heatmaps(
    use_torchserve: Any, technologist: Any, specimen: Any, tech_client: Client
) -> None:
    (image,) = upload_images(technologist, specimen, validated(smear_paths(1)), list(dj_settings.PORTAL_MODELS))
    assert jobs.run_queued() == {"done": 4}
    analyses = list(image.analyses.all())
    assert len(analyses) == 4
    for a in analyses:
        assert a.status == "done", (a.model_name, a.error_message)
        assert a.model_version and set(a.probabilities) == {"Benign", "Early", "Pre", "Pro"}
        assert sum(a.probabilities.values()) == pytest.approx(1.0, abs=1e-3)
        assert (a.label == "") == a.abstained and (a.abstained or a.label in a.probabilities)
        assert a.latency_ms and a.latency_ms > 0
        assert storage.read(a.heatmap_name).startswith(b"\x89PNG")  # from the same single request
        assert a.heatmap_label == max(a.probabilities, key=a.probabilities.get)
    page = tech_client.get(f"/images/{image.pk}/").content.decode()
    assert page.count('aria-label="calibrated probabilities"') == 4 and page.count('class="heatmap"') == 4
    assert "progress.js" not in page  # nothing left to poll for
    assert AuditEvent.objects.filter(action="analysis.complete").count() == 4


def test_one_model_server_request_per_image_and_model(
    use_torchserve: Any, technologist: Any, specimen: Any, settings: Any
) -> None:
    """The portal pays for one inference per (image, model): TorchServe's access log shows one request."""
    log = Path(use_torchserve.workdir) / "logs" / "access_log.log"
    before = log.read_text().count("/mobilenetv3_lstm") if log.exists() else 0
    upload_images(technologist, specimen, validated(smear_paths(2)), ["mobilenetv3_lstm"])
    assert jobs.run_queued() == {"done": 2}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and log.read_text().count("/mobilenetv3_lstm") < before + 2:
        time.sleep(0.2)
    lines = [ln for ln in log.read_text().splitlines() if "/mobilenetv3_lstm" in ln][before:]
    assert len(lines) == 2 and all("/explanations/mobilenetv3_lstm" in ln for ln in lines), lines


def test_refusal_is_final_and_a_server_error_is_retried_then_failed(
    use_torchserve: Any, technologist: Any, specimen: Any, settings: Any
) -> None:
    settings.PORTAL_MIN_IMAGE_SIDE = 16  # let a 32 px image through the portal so the handler judges it
    settings.PORTAL_MODELS = ["mobilenetv3_lstm", "no_such_model"]
    buf = io.BytesIO()
    PILImage.new("RGB", (32, 32), (128, 0, 128)).save(buf, "PNG")
    (small,) = upload_images(
        technologist, specimen, [validate_image_bytes("small.png", buf.getvalue())], ["mobilenetv3_lstm"]
    )
    (real,) = upload_images(technologist, specimen, validated(smear_paths(1)), ["no_such_model"])
    counts = jobs.run_queued()
    # the refusal is stored at once, never retried; the 404 is retried PORTAL_MAX_ATTEMPTS times
    assert counts == {"rejected": 1, "pending": dj_settings.PORTAL_MAX_ATTEMPTS - 1, "failed": 1}
    rejected = small.analyses.get()
    assert (rejected.status, rejected.error_code, rejected.attempts) == ("rejected", "image_too_small", 0)
    assert "64" in rejected.error_message
    failed = real.analyses.get()
    assert failed.status == "failed" and "HTTP 404" in failed.error_message
    assert failed.attempts == dj_settings.PORTAL_MAX_ATTEMPTS
    assert jobs.queued_analysis_ids() == set()  # nothing left queued
    assert AuditEvent.objects.filter(action="analysis.fail").count() == 1


def test_upload_while_torchserve_is_down_waits_and_completes_when_it_is_back(
    model_store: Path, technologist: Any, specimen: Any, settings: Any, tmp_path: Path
) -> None:
    from serving.torchserve import start, stop

    ports = free_ports()
    settings.TORCHSERVE_URL = f"http://127.0.0.1:{ports['inference']}"
    settings.TORCHSERVE_WORKDIR = str(tmp_path / "ts")
    settings.PORTAL_MODELS = ["mobilenetv3_lstm"]
    paths = smear_paths(5)
    images = upload_images(technologist, specimen, validated(paths), ["mobilenetv3_lstm"])
    assert jobs.run_queued(max_jobs=5) == {"pending": 5}
    assert {(a.status, a.stage) for a in Analysis.objects.all()} == {("pending", "waiting")}
    info = start(model_store, models=["mobilenetv3_lstm"], workdir=tmp_path / "ts", ports=ports)
    try:
        assert jobs.run_queued() == {"done": 5}
    finally:
        stop(info=info)
    analyses = list(Analysis.objects.order_by("image_id"))
    assert [a.status for a in analyses] == ["done"] * 5
    assert all(a.waiting_since is None or a.completed_at for a in analyses)
    assert Image.objects.count() == 5
    for image, path in zip(images, paths, strict=True):
        assert storage.read(image.storage_name) == path.read_bytes()  # nothing lost or altered


def test_a_model_without_a_worker_waits_instead_of_failing(
    use_torchserve: Any, technologist: Any, specimen: Any, settings: Any
) -> None:
    """TorchServe answers 503 while a model has no worker (one restarting after a crash, here scaled to
    none): the analysis waits for it, as for a server that is down, rather than spending its three
    retries within seconds and failing; it is done once the worker is back."""
    import requests

    settings.PORTAL_MODELS = ["mobilenetv3_lstm"]
    scale = f"{use_torchserve.management_url}/models/mobilenetv3_lstm"
    mgmt = {"Authorization": f"Bearer {use_torchserve.management_key}"}
    (image,) = upload_images(technologist, specimen, validated(smear_paths(1)), ["mobilenetv3_lstm"])
    try:
        r = requests.put(f"{scale}?min_worker=0&max_worker=0&synchronous=true", headers=mgmt, timeout=60)
        assert r.status_code == 200, r.text
        for _ in range(dj_settings.PORTAL_MAX_ATTEMPTS + 1):
            assert jobs.run_queued(max_jobs=1) == {"pending": 1}
        analysis = image.analyses.get()
        assert (analysis.status, analysis.stage, analysis.attempts) == ("pending", "waiting", 0)
        assert analysis.error_message.startswith("model server unavailable: HTTP 503 from "), analysis.error_message
    finally:
        r = requests.put(f"{scale}?min_worker=1&max_worker=1&synchronous=true", headers=mgmt, timeout=120)
        assert r.status_code == 200, r.text
    assert jobs.run_queued() == {"done": 1}
    analysis.refresh_from_db()
    assert analysis.status == "done" and analysis.attempts == 0


def test_timeout_is_retried_with_backoff_then_done(
    use_torchserve: Any, technologist: Any, specimen: Any, settings: Any
) -> None:
    settings.TORCHSERVE_READ_TIMEOUT_S = 0.001  # the real server cannot answer this fast
    (image,) = upload_images(technologist, specimen, validated(smear_paths(1)), ["xception_bigru"])
    assert jobs.run_queued(max_jobs=1) == {"pending": 1}
    analysis = image.analyses.get()
    assert "timed out" in analysis.error_message and analysis.attempts == 1
    assert analysis.stage == "retrying" and analysis.next_attempt_at is not None
    settings.TORCHSERVE_READ_TIMEOUT_S = 30
    assert jobs.run_queued() == {"done": 1}
    analysis.refresh_from_db()
    assert analysis.status == "done" and analysis.error_message == "" and analysis.attempts == 1


def test_client_with_a_stale_key_rereads_the_key_file(use_torchserve: Any) -> None:
    """TorchServe refuses a stale key with 400 InvalidKeyException; the client re-reads the key file once."""
    from portal.analyses.inference import ModelClient, Prediction

    client = ModelClient(key="stale-key-from-before-a-restart")
    outcome = client.analyze("mobilenetv3_lstm", smear_paths(1)[0].read_bytes())
    assert isinstance(outcome, Prediction), outcome
    assert client.key == use_torchserve.inference_key
    assert client.ping() == (True, f"HTTP 200 Healthy from {use_torchserve.inference_url}/ping")
