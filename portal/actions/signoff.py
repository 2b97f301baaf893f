"""The reviewer's sign-off of an image: agree with the consensus of its models, or reclassify it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpRequest

from portal.actions.events import User, log_refusal
from portal.analyses.consensus import consensus
from portal.analyses.models import CLASS_LABELS, Analysis, Image, ImageReview, ImmutableError, image_is_signed
from portal.audit.log import record

__all__ = ["sign_off"]


def sign_off(
    actor: User,
    image: Image,
    *,
    decision: str,
    final_label: str | None = None,
    comment: str = "",
    expected_label: str | None = None,
    request: HttpRequest | None = None,
) -> ImageReview:
    """A reviewer's one decision on an image: agree with the consensus of its models, or reclassify it
    (a label and a comment). The image, its analyses and its cells are then immutable.

    ``expected_label``: the class the reviewer was told would be recorded (the sign-off button's); when
    given, a decision that would record another class (the consensus changed meanwhile) is refused.
    "agree" with a ``final_label`` other than the consensus is refused too: the reviewer's two answers
    disagree, and neither may be guessed.

    A refused sign-off (no permission, already signed, models still running, invalid) raises and leaves
    its own audit row.
    """
    try:
        return _sign_off(actor, image, decision, final_label, comment, expected_label, request)
    except (PermissionDenied, ValidationError, ImmutableError) as exc:
        log_refusal(
            "image.sign_off_refused",
            actor,
            image,
            request,
            exc,
            decision=decision,
            final_label=final_label or "",
            expected_label=expected_label or "",
        )
        raise


def _evidence(analyses: Sequence[Analysis]) -> dict[str, dict[str, Any]]:
    """Each model's answer as the reviewer saw it (kept in the review)."""
    return {
        a.model_name: {
            "version": a.model_version,
            "status": a.status,
            "label": a.label or None,
            "abstained": a.abstained,
            "abstain_reason": a.abstain_reason,
            "probabilities": a.probabilities,
            "error_code": a.error_code,
        }
        for a in analyses
    }


def _sign_off(
    actor: User,
    image: Image,
    decision: str,
    final_label: str | None,
    comment: str,
    expected_label: str | None,
    request: HttpRequest | None,
) -> ImageReview:
    if isinstance(actor, AnonymousUser) or not actor.has_perm("analyses.sign_off_analysis"):
        raise PermissionDenied("only reviewers can sign off")
    if decision not in ImageReview.Decision.values:
        raise ValidationError(f"unknown decision {decision!r}")
    with transaction.atomic():
        image = Image.objects.select_for_update().get(pk=image.pk)
        if image_is_signed(image.pk):
            raise ImmutableError("this image is already signed off")
        analyses = list(image.analyses.order_by("model_name"))
        if any(not a.is_final for a in analyses):
            raise ValidationError("some models are still running: sign off once every result is in")
        if not any(a.status == Analysis.Status.DONE for a in analyses):
            raise ValidationError("no model has a result for this image")
        agreed = consensus(analyses)
        consensus_label = agreed.label if agreed else None
        if decision == ImageReview.Decision.AGREE:
            if not consensus_label:
                raise ValidationError("the models reached no consensus: reclassify with a label and a comment")
            if final_label and final_label != consensus_label:
                raise ValidationError(
                    f"agreeing with the consensus ({consensus_label}) records {consensus_label}, not {final_label}: "
                    "reclassify to record another class"
                )
            final = consensus_label
        else:
            if final_label not in CLASS_LABELS:
                raise ValidationError("choose the class for the reclassification")
            if not comment.strip():
                raise ValidationError("a reclassification needs a comment")
            final = str(final_label)
        if expected_label is not None and expected_label != final:
            raise ValidationError(
                f"this decision records {final}, not {expected_label or '(nothing)'} as shown: check and sign again"
            )
        review = ImageReview.objects.create(
            image=image,
            reviewer=actor,
            reviewer_name=actor.get_username(),
            decision=decision,
            final_label=final,
            consensus_label=consensus_label or "",
            comment=comment.strip(),
            evidence=_evidence(analyses),
        )
        record(
            "image.sign_off",
            actor=actor,
            obj=image,
            request=request,
            data={
                "decision": decision,
                "consensus_label": consensus_label or "",
                "final_label": final,
                "comment": review.comment,
                "models": {a.model_name: a.label or None for a in analyses if a.status == Analysis.Status.DONE},
            },
        )
    return review
