"""Review: one decision per image on the consensus of its models (agree, or reclassify with a comment); a
signed image and its analyses are immutable; refusals are audited; technologists cannot sign."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client

from portal.actions.outcomes import store_outcome
from portal.actions.signoff import sign_off
from portal.actions.uploads import upload_images
from portal.analyses.consensus import consensus
from portal.analyses.forms import ReviewForm
from portal.analyses.models import Analysis, ImageReview, ImmutableError, Review
from portal.audit.models import AuditEvent
from tests.portal.conftest import smear_paths
from tests.portal.helpers import complete

pytestmark = pytest.mark.django_db


@pytest.fixture
def analyses(technologist: Any, specimen: Any) -> list[Analysis]:
    from portal.analyses.validation import validate_image_bytes

    path = smear_paths(1)[0]
    image = upload_images(
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
    assert "<strong>Pre-B ALL</strong> (models ranking it first: 2 of 3)" in page
    assert "Majority vote of the models" in page  # the test answers carry versions the ensemble was not fitted on
    heatmap = rev_client.get(f"/analyses/{analyses[0].pk}/heatmap.png")
    assert heatmap.status_code == 200 and b"".join(heatmap.streaming_content).startswith(b"\x89PNG")


@pytest.fixture
def finished(analyses: list[Analysis]) -> list[Analysis]:
    """Every model finished: three say Pre, one abstained (its most probable class Early)."""
    complete(analyses[3], "Pre")
    return [Analysis.objects.get(pk=a.pk) for a in analyses]


def test_reviewer_agrees_with_the_consensus_once_per_image(
    rev_client: Client, reviewer: Any, finished: list[Analysis]
) -> None:
    image = finished[0].image
    page = rev_client.get(f"/images/{image.pk}/").content.decode()
    assert page.count('id="sign-off"') == 1 and page.count("data-sign-off=") == 2  # one form, not one per model
    assert "Agree with the consensus: Pre-B ALL" in page
    # the buttons say what will be recorded, and the form carries it back
    assert ">Sign off as Pre-B ALL (agreeing with the consensus)</button>" in page
    assert '<input type="hidden" name="recorded_label" value="Pre">' in page
    response = rev_client.post(
        f"/images/{image.pk}/sign-off/", {"decision": "agree", "comment": "typical blasts", "recorded_label": "Pre"}
    )
    assert response.status_code == 302
    review = ImageReview.objects.get(image=image)
    assert (review.final_label, review.consensus_label, review.reviewer, review.comment) == (
        "Pre",
        "Pre",
        reviewer,
        "typical blasts",
    )
    assert set(review.evidence) == {a.model_name for a in finished}  # the models' answers, kept as evidence
    assert review.evidence[finished[2].model_name]["abstained"] is True
    event = AuditEvent.objects.get(action="image.sign_off")
    assert event.object_id == str(image.pk) and event.actor_username == "rev" and event.data["final_label"] == "Pre"
    page = rev_client.get(f"/images/{image.pk}/").content.decode()
    assert 'id="final-label"' in page and "Agreed with the consensus" in page and 'id="sign-off"' not in page
    assert not Review.objects.exists()  # no per-model sign-offs any more


def test_reclassify_needs_label_and_comment_and_then_leads_the_page(
    rev_client: Client, reviewer: Any, finished: list[Analysis]
) -> None:
    image = finished[0].image
    sent = {"decision": "reclassify", "final_label": "Pro", "recorded_label": "Pro"}
    response = rev_client.post(f"/images/{image.pk}/sign-off/", sent)
    # refused: the same page comes back (no redirect), the form exactly as it was sent, the error by the field
    assert response.status_code == 200
    page = response.content.decode()
    assert "Not signed: A reclassification needs a comment: say why." in page
    assert '<input type="radio" name="decision" value="reclassify"' in page
    assert 'value="reclassify" required id="id_decision_1" checked' in page  # still Reclassify, not Agree
    assert 'value="agree" required id="id_decision_0" checked' not in page
    assert '<option value="Pro" selected>Pro-B ALL</option>' in page
    comment = page.index('name="comment"')
    assert page.rfind("A reclassification needs a comment: say why.", 0, comment) > page.index('name="final_label"')
    assert ">Sign off as Pro-B ALL (reclassified)</button>" in page
    assert not ImageReview.objects.exists()
    refused = AuditEvent.objects.get(action="image.sign_off_refused")
    assert refused.data["reason"] == "A reclassification needs a comment: say why."
    assert (refused.data["decision"], refused.data["final_label"]) == ("reclassify", "Pro")
    # the comment typed in the form that came back: the reviewer's choice is recorded, with the comment
    response = rev_client.post(f"/images/{image.pk}/sign-off/", {**sent, "comment": "coarse chromatin"})
    assert response.status_code == 302
    review = ImageReview.objects.get(image=image)
    assert (review.final_label, review.decision, review.consensus_label, review.changed_consensus) == (
        "Pro",
        "reclassify",
        "Pre",
        True,
    )
    page = rev_client.get(f"/images/{image.pk}/").content.decode()
    final = page.index('id="final-label"')
    assert final < page.index('class="card status-')  # the reviewer's label comes before the models' evidence
    assert "<strong>Pro-B ALL</strong>" in page[final : final + 300] and "the consensus was Pre-B ALL" in page


def test_reclassify_without_a_class_is_refused_beside_the_class(rev_client: Client, finished: list[Analysis]) -> None:
    image = finished[0].image
    response = rev_client.post(
        f"/images/{image.pk}/sign-off/", {"decision": "reclassify", "comment": "no label", "recorded_label": ""}
    )
    page = response.content.decode()
    assert response.status_code == 200 and "Choose the class to record." in page and "no label</textarea>" in page
    assert ">Choose the class to sign off</button>" in page
    assert not ImageReview.objects.exists()


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        # "agree" with another class picked: the two answers disagree; neither is guessed
        ({"decision": "agree", "final_label": "Pro", "recorded_label": "Pre"}, "but picked Pro-B ALL"),
        # the button said Pre-B ALL (agree) but the form says reclassify to Pro: a stale or tampered form
        (
            {"decision": "reclassify", "final_label": "Pro", "comment": "x", "recorded_label": "Pre"},
            "The form would record Pro-B ALL, not Pre-B ALL: nothing was signed.",
        ),
        # no statement of what would be recorded at all (a form from before this check)
        ({"decision": "agree"}, "The form would record Pre-B ALL, not what the button said"),
    ],
)
def test_an_inconsistent_sign_off_is_refused_and_audited(
    rev_client: Client, finished: list[Analysis], sent: dict[str, str], error: str
) -> None:
    image = finished[0].image
    response = rev_client.post(f"/images/{image.pk}/sign-off/", sent)
    assert response.status_code == 200 and error in response.content.decode()
    assert not ImageReview.objects.exists()
    assert error in AuditEvent.objects.get(action="image.sign_off_refused").data["reason"]


def test_the_action_refuses_a_decision_that_records_another_class(reviewer: Any, finished: list[Analysis]) -> None:
    """The server-side guard inside the transaction: what is recorded is what the reviewer was shown."""
    image = finished[0].image
    with pytest.raises(ValidationError, match="records Pre, not Early as shown"):
        sign_off(reviewer, image, decision="agree", expected_label="Early")
    with pytest.raises(ValidationError, match=r"agreeing with the consensus \(Pre\) records Pre, not Pro"):
        sign_off(reviewer, image, decision="agree", final_label="Pro")
    assert not ImageReview.objects.exists()
    assert AuditEvent.objects.filter(action="image.sign_off_refused").count() == 2
    review = sign_off(reviewer, image, decision="agree", final_label="Pre", expected_label="Pre")
    assert review.final_label == "Pre"


def test_no_consensus_defaults_to_choosing_a_label(reviewer: Any, analyses: list[Analysis]) -> None:
    complete(analyses[3], "Pro")
    image = analyses[0].image
    agreed = consensus(list(image.analyses.all()))
    assert agreed is not None and agreed.label is None  # Pre, Pre, abstained, Pro: no majority
    form = ReviewForm(consensus_label=None)
    assert [c for c, _ in form.fields["decision"].choices] == ["reclassify"]  # type: ignore[attr-defined]
    with pytest.raises(ValidationError, match="no consensus"):
        sign_off(reviewer, image, decision="agree")
    review = sign_off(reviewer, image, decision="reclassify", final_label="Early", comment="confirmed")
    assert (review.final_label, review.consensus_label) == ("Early", "")


def test_an_image_with_models_still_running_cannot_be_signed(reviewer: Any, analyses: list[Analysis]) -> None:
    with pytest.raises(ValidationError, match="still running"):
        sign_off(reviewer, analyses[0].image, decision="reclassify", final_label="Pre", comment="x")
    assert AuditEvent.objects.filter(action="image.sign_off_refused").count() == 1


def test_a_signed_image_is_immutable(reviewer: Any, finished: list[Analysis]) -> None:
    image = finished[0].image
    review = sign_off(reviewer, image, decision="agree")
    a = Analysis.objects.get(pk=finished[0].pk)
    a.label = "Pro"
    with pytest.raises(ImmutableError):
        a.save()
    with pytest.raises(ImmutableError):
        sign_off(reviewer, image, decision="reclassify", final_label="Pro", comment="again")
    review.comment = "edited"
    with pytest.raises(ImmutableError):
        review.save()
    with pytest.raises(ImmutableError):
        review.delete()
    assert Analysis.objects.get(pk=a.pk).label == "Pre"
    assert AuditEvent.objects.get(action="image.sign_off_refused").data["reason"] == "this image is already signed off"


def test_technologist_cannot_sign_off(tech_client: Client, technologist: Any, finished: list[Analysis]) -> None:
    image = finished[0].image
    assert tech_client.post(f"/images/{image.pk}/sign-off/", {"decision": "agree"}).status_code == 403
    with pytest.raises(PermissionDenied):
        sign_off(technologist, image, decision="agree")
    page = tech_client.get(f"/images/{image.pk}/").content.decode()
    assert "data-sign-off" not in page and 'id="sign-off"' not in page and "Awaiting sign-off" in page
    assert not ImageReview.objects.exists()


def _one_model_image_finished(technologist: Any, specimen: Any, path: Any, label: str) -> Any:
    """A frame uploaded for xception_bigru alone, its analysis finished with ``label``."""
    from portal.analyses.validation import validate_image_bytes

    image = upload_images(
        technologist, specimen, [validate_image_bytes(path.name, path.read_bytes())], ["xception_bigru"]
    )[0]
    complete(image.analyses.get(), label)
    return image


def test_sign_off_and_open_the_next_image_follows_the_worklist(
    rev_client: Client, technologist: Any, specimen: Any, finished: list[Analysis]
) -> None:
    second = _one_model_image_finished(technologist, specimen, smear_paths(2)[1], "Pro")
    first = finished[0].image
    sent = {"decision": "agree", "next": "worklist"}
    response = rev_client.post(f"/images/{first.pk}/sign-off/", {**sent, "recorded_label": "Pre"})
    assert response["Location"] == f"/images/{second.pk}/"
    response = rev_client.post(f"/images/{second.pk}/sign-off/", {**sent, "recorded_label": "Pro"})
    assert response["Location"] == f"/images/{second.pk}/"  # nothing left: stay on the signed image


def test_the_page_shows_the_fitted_ensembles_consensus_and_signs_on_it(
    rev_client: Client, reviewer: Any, finished: list[Analysis]
) -> None:
    from portal.analyses.consensus import load_ensemble

    ensemble = load_ensemble()
    assert ensemble is not None
    for member in ensemble.members:  # the answers come from the versions the ensemble was fitted on
        Analysis.objects.filter(image_id=finished[0].image_id, model_name=member.name).update(
            model_version=member.version
        )
    image = finished[0].image
    agreed = consensus(list(image.analyses.all()))
    assert agreed is not None and agreed.method == "ensemble" and agreed.label == "Pre"
    page = rev_client.get(f"/images/{image.pk}/").content.decode()
    assert f"Combined by the fitted ensemble (version {ensemble.version}) from the probabilities of 4 models." in page
    assert "Agree with the consensus: Pre-B ALL" in page
    review = sign_off(reviewer, image, decision="agree")
    assert (review.final_label, review.consensus_label) == ("Pre", "Pre")


def test_a_benign_answer_under_the_safety_threshold_is_shown_as_such(
    rev_client: Client, analyses: list[Analysis]
) -> None:
    from tests.portal.helpers import prediction

    answer = prediction("Benign", confidence=0.9, abstained=True)
    answer.body.update(abstain_reason="benign_not_confirmed", benign_threshold=0.95)
    store_outcome(analyses[3].pk, answer)
    stored = Analysis.objects.get(pk=analyses[3].pk)
    assert (stored.abstained, stored.abstain_reason, stored.label) == (True, "benign_not_confirmed", "")
    page = rev_client.get(f"/images/{stored.image_id}/").content.decode()
    assert "Benign not confirmed: P(Benign) under the model's safety threshold" in page
    assert rev_client.get(f"/api/analyses/{stored.pk}/").json()["abstain_reason"] == "benign_not_confirmed"


@pytest.mark.django_db(transaction=True)
def test_two_reviewers_signing_the_same_image_at_once_make_one_review(
    make_user: Any, technologist: Any, specimen: Any
) -> None:
    """Both press "Sign off" together: one review is stored, the other is refused, nothing half-written."""
    import threading

    from django.db import connections

    image = _one_model_image_finished(technologist, specimen, smear_paths(1)[0], "Pre")
    reviewers = [make_user(f"rev{i}", "reviewer") for i in range(2)]
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def sign(user: Any) -> None:
        try:
            start.wait()
            sign_off(user, image, decision="agree")
            outcomes.append("signed")
        except Exception as exc:  # the loser: ImmutableError on MySQL (row lock, then "already signed");
            # the in-memory test SQLite refuses the concurrent write instead (OperationalError)
            outcomes.append(type(exc).__name__)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sign, args=(u,)) for u in reviewers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes).count("signed") == 1 and len(outcomes) == 2, outcomes
    assert ImageReview.objects.filter(image=image).count() == 1
    assert AuditEvent.objects.filter(action="image.sign_off").count() == 1
