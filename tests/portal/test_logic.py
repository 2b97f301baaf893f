"""Plain logic: consensus, image validation, outcome -> state mapping, storage names."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from PIL import Image as PILImage

from portal import actions
from portal.analyses import storage
from portal.analyses.consensus import consensus
from portal.analyses.inference import Refusal, ServerError
from portal.analyses.models import Analysis
from portal.analyses.validation import validate_image_bytes
from portal.audit.models import AuditEvent
from tests.portal.conftest import smear_paths
from tests.portal.helpers import complete


@dataclass
class A:
    status: str
    label: str
    abstained: bool = False
    malignant_probability: float | None = 0.5


def test_consensus_needs_a_strict_majority() -> None:
    assert consensus([]) is None
    assert consensus([A("pending", "")]) is None
    c = consensus([A("done", "Pre"), A("done", "Pre"), A("done", "Pro"), A("failed", "")])
    assert c is not None and c.label == "Pre" and c.agreement == "2 of 3"
    tie = consensus([A("done", "Pre"), A("done", "Pre"), A("done", "Pro"), A("done", "Pro")])
    assert tie is not None and tie.label is None and tie.refer
    abst = consensus([A("done", "Pre"), A("done", "Pre", abstained=True)])
    assert abst is not None and abst.label is None and abst.abstained == 1
    assert consensus(
        [A("done", "Benign", malignant_probability=0.1), A("done", "Benign", malignant_probability=0.3)]
    ).mean_malignant_probability == pytest.approx(0.2)


def _encode(fmt: str, size: tuple[int, int] = (100, 80)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, (10, 20, 30)).save(buf, fmt)
    return buf.getvalue()


def _multipage_tiff() -> bytes:
    buf = io.BytesIO()
    frames = [PILImage.new("RGB", (100, 80), (i, 0, 0)) for i in (10, 20)]
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "ctype"), [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("BMP", "image/bmp"), ("TIFF", "image/tiff")]
)
def test_accepted_formats(fmt: str, ctype: str) -> None:
    v = validate_image_bytes(f"x.{fmt.lower()}", _encode(fmt))
    assert (v.content_type, v.width, v.height) == (ctype, 100, 80)


def test_real_smear_is_accepted() -> None:
    path = smear_paths(1)[0]
    v = validate_image_bytes(path.name, path.read_bytes())
    assert v.format == "JPEG" and v.width >= 224


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", "empty"),
        (b"GIF89a garbage", "not_an_image"),
        (_encode("GIF"), "not_an_image"),
        (_encode("PNG", (30, 300)), "image_too_small"),
        (_multipage_tiff(), "not_an_image"),  # refused by the models too: the same decoder decides
    ],
)
def test_refused_uploads(payload: bytes, code: str) -> None:
    with pytest.raises(ValidationError) as err:
        validate_image_bytes("f", payload)
    assert err.value.code == code


def test_size_limit(settings: Any) -> None:
    settings.PORTAL_MAX_UPLOAD_BYTES = 100
    with pytest.raises(ValidationError) as err:
        validate_image_bytes("big.png", _encode("PNG"))
    assert err.value.code == "image_too_large"


def test_storage_refuses_foreign_names() -> None:
    for bad in ["../etc/passwd", "images/../../x", "images/", "other/abc.png", "images/.hidden"]:
        with pytest.raises(ValueError):
            storage.path_for(bad)


@pytest.mark.django_db
def test_outcomes_map_to_states(technologist: Any, specimen: Any, settings: Any) -> None:
    path = smear_paths(1)[0]
    image = actions.upload_images(
        technologist, specimen, [validate_image_bytes(path.name, path.read_bytes())], list(settings.PORTAL_MODELS)
    )[0]
    a, b, c, d = image.analyses.order_by("model_name")
    assert actions.store_outcome(a.pk, Refusal("not_a_blood_smear", "score 0.1 < 0.5")) == "rejected"
    assert actions.store_outcome(b.pk, ServerError("HTTP 503")) == "failed"
    complete(d, "Benign")
    a, b, c, d = Analysis.objects.filter(image=image).order_by("model_name")
    assert (a.status, a.error_code, a.error_message) == ("rejected", "not_a_blood_smear", "score 0.1 < 0.5")
    assert (b.status, b.error_message) == ("failed", "HTTP 503")
    assert (c.status, c.stage, c.attempts) == ("pending", "queued", 0)
    assert (d.status, d.label, d.latency_ms) == ("done", "Benign", 42.0)
    assert d.heatmap_name.startswith("heatmaps/") and storage.read(d.heatmap_name).startswith(b"\x89PNG")
    # A final analysis is never stored twice: a second outcome (a job delivered twice) is dropped.
    assert actions.store_outcome(d.pk, Refusal("not_a_blood_smear", "late")) is None
    assert actions.store_outcome(a.pk, ServerError("late")) is None
    d.refresh_from_db()
    assert (d.status, d.label) == ("done", "Benign")
    assert AuditEvent.objects.filter(action="analysis.complete", object_id=str(d.pk)).count() == 1
