"""The cell analysis end to end: real BCCD frames uploaded, the job calls the real TorchServe's wbc_cells
(``/predictions/wbc_cells`` with the header ``annotate: 1``, once per image, not per leukemia model) and
the portal stores the cells in image pixels, the annotated image, and shows them on the results and
differential pages.

Frames come from the validation split (training.cell_data.bccd_split), with their VOC WBC boxes: the
portal must place the model's boxes on the frame it was given (not on a resized copy).
"""

from __future__ import annotations

import io
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as dj_settings
from django.test import Client
from PIL import Image as PILImage

from core.registry import CELL_CLASSES
from portal import jobs
from portal.actions.uploads import upload_images
from portal.analyses import storage
from portal.analyses.differential import NRBC, PLATELET, WHITE_CATEGORIES
from portal.analyses.models import CellAnalysis, Image
from portal.analyses.validation import validate_image_bytes
from portal.audit.models import AuditEvent
from tests.portal.conftest import smear_paths
from training.cell_data import BccdFrame, bccd_split

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def _iou(a: list[int], b: list[int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


@pytest.fixture
def cell_frames() -> list[BccdFrame]:
    """Three validation frames with exactly one annotated white cell each."""
    _, val = bccd_split()
    chosen = [f for f in val if len(f.wbc_boxes) == 1][:3]
    assert len(chosen) == 3, "BCCD validation split has too few single-WBC frames"
    return chosen


def test_wbc_cells_through_the_real_model_server(
    use_torchserve: Any, technologist: Any, specimen: Any, settings: Any, tech_client: Client, cell_frames: list[Any]
) -> None:
    if "wbc_cells" not in use_torchserve.models:
        pytest.fail(f"TorchServe serves no wbc_cells (models: {use_torchserve.models}); `make archive` builds it")
    settings.PORTAL_CELL_MODEL = "wbc_cells"
    log = Path(use_torchserve.workdir) / "logs" / "access_log.log"
    before = log.read_text().count("/predictions/wbc_cells") if log.exists() else 0
    images = upload_images(
        technologist,
        specimen,
        [validate_image_bytes(f.image.name, f.image.read_bytes()) for f in cell_frames],
        ["mobilenetv3_lstm", "effnetb3_vit"],
    )
    assert jobs.run_queued() == {"done": 3 * 2 + 3}  # two leukemia analyses and one cell analysis per image

    matched = 0
    for image, frame in zip(images, cell_frames, strict=True):
        job = CellAnalysis.objects.get(image=image)
        assert job.status == "done", job.error_message
        assert job.model_version and job.latency_ms and job.latency_ms > 0
        assert storage.read(job.annotated_name).startswith(b"\x89PNG")  # asked for with the header annotate: 1
        cells = list(image.cells.all())
        for c in cells:
            x0, y0, x1, y1 = c.box
            assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
            assert set(c.probabilities) <= set(CELL_CLASSES)
            assert sum(c.probabilities.values()) == pytest.approx(1.0, abs=1e-3)
            assert (c.label == "") == c.abstained and (c.abstained or c.label in CELL_CLASSES)
            assert 0.0 <= c.score <= 1.0
        truth = frame.wbc_boxes[0].as_list()
        matched += any(_iou(c.box, truth) >= 0.5 for c in cells)
        # the model's own counts agree with the stored cells (abstentions as unclassified)
        assert {k: v for k, v in job.counts.items() if v} == Counter(c.final_label for c in cells)
    assert matched >= 2, "the stored boxes do not land on the annotated white cells"

    # one request per image for the cell model, whatever the number of leukemia models
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and log.read_text().count("/predictions/wbc_cells") < before + 3:
        time.sleep(0.2)
    assert log.read_text().count("/predictions/wbc_cells") == before + 3
    assert AuditEvent.objects.filter(action="cells.complete").count() == 3

    image = Image.objects.get(pk=images[0].pk)
    page = tech_client.get(f"/images/{image.pk}/").content.decode()
    n = image.cells.count()
    assert page.count('<rect class="box"') == n and page.count("data-cell-row=") == n
    assert "progress.js" not in page
    differential = tech_client.get(f"/specimens/{specimen.pk}/differential/").content.decode()
    # the denominator: white cells (typed or unclassified), not the platelets or erythroblasts the model found
    stored = [c for i in images for c in i.cells.all()]
    white = sum(1 for c in stored if c.final_label in WHITE_CATEGORIES)
    assert f'<th class="num" data-total>{white}</th>' in differential
    assert "data-excluded>0</td>" in differential and white + sum(
        1 for c in stored if c.final_label in (NRBC, PLATELET)
    ) == len(stored)
    crop = tech_client.get(f"/cells/{image.cells.first().pk}/crop.png") if n else None
    assert crop is None or (crop.status_code == 200 and crop.content.startswith(b"\x89PNG"))


def test_cell_job_refusal_is_final_and_a_server_error_is_retried_then_failed(
    use_torchserve: Any, technologist: Any, specimen: Any, settings: Any
) -> None:
    settings.PORTAL_MIN_IMAGE_SIDE = 16  # let a 32 px image through the portal so the handler judges it
    settings.PORTAL_CELL_MODEL = "wbc_cells"
    buf = io.BytesIO()
    PILImage.new("RGB", (32, 32), (128, 0, 128)).save(buf, "PNG")
    (small,) = upload_images(
        technologist, specimen, [validate_image_bytes("small.png", buf.getvalue())], ["mobilenetv3_lstm"]
    )
    settings.PORTAL_CELL_MODEL = "no_such_cells"  # TorchServe answers 404: a server error, retried
    path = smear_paths(1)[0]
    (real,) = upload_images(
        technologist, specimen, [validate_image_bytes(path.name, path.read_bytes())], ["mobilenetv3_lstm"]
    )
    counts = jobs.run_queued()
    # two leukemia analyses: one refused (too small), one done; the cell jobs: refused / retried then failed
    assert counts == {"rejected": 2, "done": 1, "pending": dj_settings.PORTAL_MAX_ATTEMPTS - 1, "failed": 1}
    rejected = CellAnalysis.objects.get(image=small)
    assert (rejected.status, rejected.error_code, rejected.attempts) == ("rejected", "image_too_small", 0)
    failed = CellAnalysis.objects.get(image=real)
    assert failed.status == "failed" and "HTTP 404" in failed.error_message
    assert failed.attempts == dj_settings.PORTAL_MAX_ATTEMPTS
    assert jobs.queued_cell_analysis_ids() == set()
    assert AuditEvent.objects.filter(action="cells.fail").count() == 1
    assert AuditEvent.objects.filter(action="cells.reject").count() == 1
