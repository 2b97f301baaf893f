"""The specimen: reads of its summary, and the reviewer's one sign-off of the specimen.

- :func:`sign_off_specimen`: the reviewer's one decision on the specimen once every frame with a result is
  signed off: agree with the conclusion (portal.analyses.conclusion) or set the specimen's class, always
  with an interpretive comment. The conclusion is kept as evidence; the sign-off never changes, and the
  specimen takes no more images (portal.actions.uploads.upload_images).
"""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpRequest

from portal.actions.events import User, log_event, log_refusal
from portal.analyses.conclusion import SpecimenConclusion
from portal.analyses.models import CLASS_LABELS, ImmutableError, SpecimenReview
from portal.analyses.specimen_summary import specimen_conclusion
from portal.audit.log import record
from portal.patients.models import Specimen

__all__ = ["log_summary_read", "sign_off_specimen"]


def log_summary_read(actor: User, specimen: Specimen, conclusion: SpecimenConclusion, request: HttpRequest) -> None:
    """Audit a read of the specimen's summary (the page or the API) with the conclusion it showed."""
    log_event(
        "specimen.summary",
        actor=actor,
        obj=specimen,
        request=request,
        data={"label": conclusion.label, "checks": [c.code for c in conclusion.checks]},
    )


def sign_off_specimen(
    actor: User,
    specimen: Specimen,
    *,
    decision: str,
    final_label: str | None = None,
    comment: str = "",
    request: HttpRequest | None = None,
) -> SpecimenReview:
    """The reviewer's one sign-off of the specimen, with an interpretive comment; then it never changes."""
    try:
        return _sign_off_specimen(actor, specimen, decision, final_label, comment, request)
    except (PermissionDenied, ValidationError, ImmutableError) as exc:
        log_refusal(
            "specimen.sign_off_refused",
            actor,
            specimen,
            request,
            exc,
            decision=str(decision)[:20],
            final_label=str(final_label or "")[:20],
        )
        raise


def _sign_off_specimen(
    actor: User, specimen: Specimen, decision: str, final_label: str | None, comment: str, request: HttpRequest | None
) -> SpecimenReview:
    if isinstance(actor, AnonymousUser) or not actor.has_perm("analyses.sign_off_analysis"):
        raise PermissionDenied("only reviewers can sign off a specimen")
    if decision not in SpecimenReview.Decision.values:
        raise ValidationError(f"unknown decision {decision!r}")
    comment = comment.strip()
    if not comment:
        raise ValidationError("a specimen sign-off needs an interpretive comment")
    with transaction.atomic():
        specimen = Specimen.objects.select_for_update().get(pk=specimen.pk)
        if SpecimenReview.objects.filter(specimen=specimen).exists():
            raise ImmutableError("this specimen is already signed off")
        conclusion = specimen_conclusion(specimen)
        frames = [f for f in conclusion.frames if f.evidence.has_result or f.evidence.pending]
        if not frames:
            raise ValidationError("no frame of this specimen has a result")
        if conclusion.pending:
            raise ValidationError("some frames are still being analysed: sign off once every result is in")
        unsigned = [f.evidence.name for f in frames if f.source != "signed"]
        if unsigned:
            raise ValidationError(f"sign off every frame first; not signed yet: {', '.join(unsigned)}")
        if decision == SpecimenReview.Decision.AGREE:
            if conclusion.label is None:
                raise ValidationError("the conclusion refers the specimen: set its class yourself, with your comment")
            final = conclusion.label
        else:
            if final_label not in CLASS_LABELS:
                raise ValidationError("choose the specimen's class")
            final = str(final_label)
        blast = conclusion.differential.blast_percent
        review = SpecimenReview.objects.create(
            specimen=specimen,
            reviewer=actor,
            reviewer_name=actor.get_username(),
            decision=decision,
            final_label=final,
            conclusion_label=conclusion.label or "",
            blast_percent=None if blast is None else round(blast, 1),
            comment=comment,
            evidence=conclusion.as_dict(),
        )
        record(
            "specimen.sign_off",
            actor=actor,
            obj=specimen,
            request=request,
            data={
                "decision": decision,
                "conclusion_label": conclusion.label or "",
                "final_label": final,
                "comment": comment,
                "blast_percent": review.blast_percent,
                "white_cells": conclusion.differential.white_cells,
                "checks": [c.code for c in conclusion.checks],
                "frames": {str(f.evidence.image_id): f.label for f in conclusion.frames},
            },
        )
    return review
