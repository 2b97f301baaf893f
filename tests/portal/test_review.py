"""Review: reviewers agree or reclassify and sign off; signed analyses are immutable; technologists cannot."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client

from portal import actions
from portal.analyses.models import Analysis, ImmutableError, Review
from portal.audit.models import AuditEvent
from tests.portal.conftest import smear_paths
from tests.portal.helpers import complete

pytestmark = pytest.mark.django_db


@pytest.fixture
def analyses(technologist: Any, specimen: Any) -> list[Analysis]:
    from portal.analyses.validation import validate_image_bytes

    path = smear_paths(1)[0]
    image = actions.upload_images(
        technologist,
        specimen,
        [validate_image_bytes(path.name, path.read_bytes())],
        ["xception_bigru", "effnetb3_bigru", "effnetb3_vit", "mobilenetv3_lstm"],
    )[0]
    out = list(image.analyses.order_by("model_name"))
    complete(out[0], "Pre")
    complete(out[1], "Pre")
    complete(out[2], "Early", abstained=True)
    return out


def test_results_page_shows_side_by_side_consensus_chart_heatmap_and_disclaimer(
    rev_client: Client, analyses: list[Analysis]
) -> None:
    page = rev_client.get(f"/images/{analyses[0].image_id}/").content.decode()
    assert page.count('class="card status-') == 4
    assert "Refer for manual review" in page  # the abstaining model
    assert page.count('aria-label="calibrated probabilities"') == 3
    assert f"/analyses/{analyses[0].pk}/heatmap.png" in page
    assert "Decision support only" in page
    assert "v1.0" in page and "latency 42 ms" in page
    # 2 of 3 finished models say Pre: a strict majority.
    assert "<strong>Pre</strong> (2 of 3 models)" in page
    heatmap = rev_client.get(f"/analyses/{analyses[0].pk}/heatmap.png")
    assert heatmap.status_code == 200 and b"".join(heatmap.streaming_content).startswith(b"\x89PNG")


def test_reviewer_agrees_and_signs_off(rev_client: Client, reviewer: Any, analyses: list[Analysis]) -> None:
    a = analyses[0]
    response = rev_client.post(f"/analyses/{a.pk}/sign-off/", {"decision": "agree", "comment": "typical blasts"})
    assert response.status_code == 302
    review = Review.objects.get(analysis=a)
    assert (review.final_label, review.reviewer, review.comment) == ("Pre", reviewer, "typical blasts")
    event = AuditEvent.objects.get(action="analysis.sign_off")
    assert event.object_id == str(a.pk) and event.actor_username == "rev" and event.data["final_label"] == "Pre"
    assert "Signed off by rev" in rev_client.get(f"/images/{a.image_id}/").content.decode()


def test_reclassify_needs_label_and_comment(rev_client: Client, reviewer: Any, analyses: list[Analysis]) -> None:
    a = analyses[1]
    rev_client.post(f"/analyses/{a.pk}/sign-off/", {"decision": "reclassify", "final_label": "Pro"})
    assert not Review.objects.exists()
    rev_client.post(f"/analyses/{a.pk}/sign-off/", {"decision": "reclassify", "final_label": "Pro", "comment": "no"})
    assert Review.objects.get(analysis=a).final_label == "Pro"


def test_abstained_analysis_cannot_be_agreed_with(reviewer: Any, analyses: list[Analysis]) -> None:
    with pytest.raises(ValidationError):
        actions.sign_off(reviewer, analyses[2], decision="agree")
    review = actions.sign_off(reviewer, analyses[2], decision="reclassify", final_label="Early", comment="confirmed")
    assert review.final_label == "Early"


def test_pending_analysis_cannot_be_signed(reviewer: Any, analyses: list[Analysis]) -> None:
    with pytest.raises(ValidationError):
        actions.sign_off(reviewer, analyses[3], decision="reclassify", final_label="Pre", comment="x")


def test_signed_analysis_is_immutable(reviewer: Any, analyses: list[Analysis]) -> None:
    a = analyses[0]
    review = actions.sign_off(reviewer, a, decision="agree")
    a.refresh_from_db()
    a.label = "Pro"
    with pytest.raises(ImmutableError):
        a.save()
    with pytest.raises(ImmutableError):
        actions.sign_off(reviewer, a, decision="reclassify", final_label="Pro", comment="again")
    review.comment = "edited"
    with pytest.raises(ImmutableError):
        review.save()
    with pytest.raises(ImmutableError):
        review.delete()
    assert Analysis.objects.get(pk=a.pk).label == "Pre"


def test_technologist_cannot_sign_off(tech_client: Client, technologist: Any, analyses: list[Analysis]) -> None:
    a = analyses[0]
    assert tech_client.post(f"/analyses/{a.pk}/sign-off/", {"decision": "agree"}).status_code == 403
    with pytest.raises(PermissionDenied):
        actions.sign_off(technologist, a, decision="agree")
    page = tech_client.get(f"/images/{a.image_id}/").content.decode()
    assert "Sign off</button>" not in page and "Awaiting sign-off" in page
    assert not Review.objects.exists()
