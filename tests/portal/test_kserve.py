"""The portal on the Open Inference Protocol (v2): each model at its own URL, as on Kubernetes with one
KServe predictor per model (KServe's model server in front of TorchServe, and the project's own KServe
predictor, kserve_predictor/, with no TorchServe), and against TorchServe's own v2 endpoint (token
authorization on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as dj_settings

from core.registry import served_model_names
from portal import jobs
from portal.actions.uploads import upload_images
from portal.analyses import storage
from portal.analyses.inference import CellPrediction, ModelClient, Prediction, Refusal
from portal.analyses.models import CellAnalysis
from portal.analyses.validation import validate_image_bytes
from serving.torchserve import free_ports
from tests.conftest import KSERVE_MODELS, kserve_model_server
from tests.handlers.inputs import natural_photo_bytes
from tests.portal.conftest import smear_paths, validated

pytestmark = [pytest.mark.django_db, pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(params=["kserve", "kserve_predictor"])
def on_kserve(request: pytest.FixtureRequest, settings: Any) -> str:
    """The portal on v2, its models at a KServe model server's URL (in front of TorchServe, or the project's
    own predictor) and TORCHSERVE_URL pointing nowhere: only the per-model URLs can answer. The client is
    the same, unchanged, for both."""
    kserve: str = request.getfixturevalue(request.param)
    settings.PORTAL_INFERENCE_PROTOCOL = "v2"
    settings.PORTAL_MODEL_URLS = dict.fromkeys(KSERVE_MODELS, kserve)
    settings.TORCHSERVE_URL = f"http://127.0.0.1:{free_ports()['inference']}"
    settings.TORCHSERVE_KEY = "no-key-behind-kserve"  # KServe ignores it; the client never reads a key file
    settings.PORTAL_MODELS = ["mobilenetv3_lstm"]
    settings.PORTAL_CELL_MODEL = "wbc_cells"
    return kserve


def test_the_client_gets_predictions_heatmaps_cells_and_refusals_through_kserve(on_kserve: str) -> None:
    client = ModelClient()
    raw = smear_paths(1)[0].read_bytes()
    frame = client.analyze("mobilenetv3_lstm", raw)
    assert isinstance(frame, Prediction), frame
    assert frame.heatmap_png and frame.heatmap_png.startswith(b"\x89PNG")
    assert frame.explained_class == max(frame.body["probabilities"], key=frame.body["probabilities"].get)
    cells = client.cells("wbc_cells", raw)
    assert isinstance(cells, CellPrediction), cells
    assert cells.annotated_png and cells.annotated_png.startswith(b"\x89PNG") and cells.body["cells"]
    refusal = client.analyze("mobilenetv3_lstm", natural_photo_bytes())
    assert isinstance(refusal, Refusal) and refusal.code == "not_a_blood_smear", refusal
    assert refusal.message.startswith("this does not look like") and "for url" not in refusal.message
    assert client.ping() == (True, f"HTTP 200 from {on_kserve}/v2/health/ready")


def test_uploads_are_analysed_and_refused_through_kserve(on_kserve: str, technologist: Any, specimen: Any) -> None:
    (smear,) = upload_images(technologist, specimen, validated(smear_paths(1)), ["mobilenetv3_lstm"])
    (photo,) = upload_images(
        technologist, specimen, [validate_image_bytes("photo.jpg", natural_photo_bytes())], ["mobilenetv3_lstm"]
    )
    counts = jobs.run_queued()
    assert counts == {"done": 2, "rejected": 2}, counts  # per image: the frame model and the cell model
    analysis = smear.analyses.get()
    assert analysis.status == "done" and storage.read(analysis.heatmap_name).startswith(b"\x89PNG")
    assert CellAnalysis.objects.get(image=smear).status == "done"
    refused = photo.analyses.get()
    assert (refused.status, refused.error_code, refused.attempts) == ("rejected", "not_a_blood_smear", 0)


def test_the_portal_on_torchserves_own_v2_endpoint(
    use_torchserve: Any, technologist: Any, specimen: Any, settings: Any
) -> None:
    settings.PORTAL_INFERENCE_PROTOCOL = "v2"
    settings.PORTAL_CELL_MODEL = "wbc_cells"
    paths: list[Path] = smear_paths(1)
    (image,) = upload_images(
        technologist,
        specimen,
        validated(paths),
        list(dj_settings.PORTAL_MODELS),
    )
    assert jobs.run_queued() == {"done": len(dj_settings.PORTAL_MODELS) + 1}
    for a in image.analyses.all():
        assert a.status == "done" and storage.read(a.heatmap_name).startswith(b"\x89PNG"), (
            a.model_name,
            a.error_message,
        )
    assert CellAnalysis.objects.get(image=image).status == "done"
    # TorchServe has no /v2/health/ready: the client asks its /ping instead
    assert ModelClient().ping() == (True, f"HTTP 200 Healthy from {use_torchserve.inference_url}/ping")
    assert set(dj_settings.PORTAL_MODELS) | {"wbc_cells"} == set(served_model_names())  # every served model


def _upload_on_v2(settings: Any, url: str, technologist: Any, specimen: Any) -> Any:
    """The portal on v2 with mobilenetv3_lstm at ``url``; one real smear uploaded for it (its image)."""
    settings.PORTAL_INFERENCE_PROTOCOL = "v2"
    settings.PORTAL_MODEL_URLS = {"mobilenetv3_lstm": url}
    (image,) = upload_images(technologist, specimen, validated(smear_paths(1)), ["mobilenetv3_lstm"])
    return image


def test_a_predictor_that_is_down_leaves_its_analyses_waiting(technologist: Any, specimen: Any, settings: Any) -> None:
    """A KServe predictor scaled to zero or restarting refuses connections: the analysis waits for it
    (as for a TorchServe that is down) instead of failing, and /readyz says which URL is down."""
    down = f"http://127.0.0.1:{free_ports()['inference']}"
    image = _upload_on_v2(settings, down, technologist, specimen)
    assert jobs.run_queued(max_jobs=1) == {"pending": 1}
    analysis = image.analyses.get()
    assert (analysis.status, analysis.stage) == ("pending", "waiting")
    assert analysis.error_message == f"model server unreachable at {down}: ConnectionError"
    healthy, detail = ModelClient().ping(["mobilenetv3_lstm"])
    assert not healthy and detail == f"unreachable at {down}/v2/health/ready: ConnectionError"


def test_torchserve_down_behind_a_live_kserve_model_server_leaves_the_analysis_waiting(
    model_store: Path, technologist: Any, specimen: Any, settings: Any, tmp_path: Path
) -> None:
    """In a predictor pod, TorchServe can stop while KServe's model server stays up (and keeps saying
    ready): KServe then answers HTTP 500 "ConnectError : ...". The analysis waits for the predictor, as
    for one that is down, and is done when TorchServe is back on the same port."""
    from bench.kserve_server import torchserve_config
    from serving.torchserve import start, stop

    ports = free_ports()
    config = torchserve_config(tmp_path / "config.properties")
    ts = start(model_store, models=["mobilenetv3_lstm"], workdir=tmp_path / "ts", config=config, ports=ports)
    with kserve_model_server(ts, tmp_path / "kserve.log") as (url, _):
        image = _upload_on_v2(settings, url, technologist, specimen)
        stop(info=ts)
        try:
            for _ in range(dj_settings.PORTAL_MAX_ATTEMPTS + 1):
                assert jobs.run_queued(max_jobs=1) == {"pending": 1}
            analysis = image.analyses.get()
            assert (analysis.status, analysis.stage, analysis.attempts) == ("pending", "waiting", 0)
            assert analysis.error_message == (
                f"the predictor behind {url}/v2/models/mobilenetv3_lstm/infer refused the connection: ConnectError"
            )
        finally:
            ts = start(model_store, models=["mobilenetv3_lstm"], workdir=tmp_path / "ts", config=config, ports=ports)
        try:
            assert jobs.run_queued() == {"done": 1}
        finally:
            stop(info=ts)
    analysis.refresh_from_db()
    assert analysis.status == "done" and storage.read(analysis.heatmap_name).startswith(b"\x89PNG")


def test_predictors_that_hang_are_asked_at_once_so_readyz_answers_within_its_probe(settings: Any) -> None:
    """Three predictors that accept the connection and never answer (a cold start behind KServe's
    activator): the readiness check waits one 2 s timeout, not three, inside the probe's 5 s."""
    import socket
    import time

    hanging = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(4)  # the kernel accepts; nobody reads or answers
        hanging.append(s)
    try:
        settings.PORTAL_INFERENCE_PROTOCOL = "v2"
        settings.PORTAL_MODEL_URLS = {
            m: f"http://127.0.0.1:{s.getsockname()[1]}"
            for m, s in zip(("xception_bigru", "effnetb3_bigru", "effnetb3_vit"), hanging, strict=True)
        }
        t0 = time.monotonic()
        healthy, detail = ModelClient().ping(list(settings.PORTAL_MODEL_URLS))
        elapsed = time.monotonic() - t0
    finally:
        for s in hanging:
            s.close()
    assert not healthy and detail.count("ReadTimeout") == 3, detail
    assert elapsed < 4.0, elapsed  # one after the other: at least 6 s
