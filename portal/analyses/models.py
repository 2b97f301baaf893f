"""Images uploaded for a specimen, one Analysis per (image, model), and the reviewer's sign-off.

An Analysis is created ``pending`` (with its queued job, portal.jobs) and committed before TorchServe
is called; it ends ``done``, ``rejected`` (the model server refused the image: the reason is kept) or
``failed`` (server errors on every one of PORTAL_MAX_ATTEMPTS attempts, or the model server
unreachable for longer than PORTAL_WAIT_GIVE_UP_S). While pending, ``stage`` says where it is:
queued, running, waiting (model server unreachable; ``waiting_since``) or retrying (after a server
error; ``next_attempt_at``).

A reviewer signs off an image, not a model: one ImageReview per image agrees with the consensus of its
models or reclassifies it, with the models' answers kept as evidence. Once an image is signed its
analyses and cells are immutable. (Review is the per-model sign-off of earlier versions, kept read-only
so that what was signed stays readable.)

The cell model runs once per image (CellAnalysis, the same job states) and stores one Cell per white
cell found; a technologist may reclassify a cell, or add one the model missed, until a reviewer signs off
any analysis of its frame.

A reviewer signs a specimen off once (SpecimenReview), after every frame with a result is signed: its
conclusion (portal.analyses.conclusion) with an interpretive comment, the conclusion as evidence. It never
changes, and a signed specimen takes no more images.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from core.aspect import x_scale_of
from core.cell_answer import CELL_COLOURS, UNCLASSIFIED
from core.prediction import ABSTAIN_MESSAGES
from core.registry import CELL_CLASSES, CELL_DESCRIPTIONS, CLASS_NAMES
from portal.analyses.differential import REVIEW_LABELS, describe
from portal.patients.models import Specimen

__all__ = [
    "CELL_LABEL_CHOICES",
    "CLASS_LABELS",
    "REVIEWED_LABEL_CHOICES",
    "FINAL_STATUSES",
    "Analysis",
    "Cell",
    "CellAnalysis",
    "Image",
    "ImageReview",
    "ImmutableError",
    "QueuedJob",
    "Review",
    "SpecimenReview",
    "image_is_signed",
    "specimen_is_signed",
]

# The classes in the order of the inference contract, from the model registry (docs/guides/serving.md).
CLASS_LABELS: tuple[str, ...] = CLASS_NAMES
LABEL_CHOICES = [(c, c) for c in CLASS_LABELS]
FINAL_STATUSES = frozenset({"done", "failed", "rejected"})
#: What each refusal code of the inference contract (core.errors) means for the person who uploaded.
REFUSAL_TEXTS: dict[str, str] = {
    "not_a_blood_smear": "This image does not look like a stained peripheral blood smear field of view, so the "
    "models will not classify it. Upload a smear photographed through the microscope.",
    "not_an_image": "The file is not an image the models can read (JPEG, PNG, BMP or TIFF, one frame).",
    "image_too_small": "The image is too small for the models (each side must be at least 64 pixels).",
    "image_too_large": "The image is too large for the models (at most 50 megapixels and 25 MB).",
    "bad_request": "The model server could not read the upload.",
}


class ImmutableError(RuntimeError):
    """Raised when code tries to change a signed analysis or a review."""


class Image(models.Model):
    specimen = models.ForeignKey(Specimen, on_delete=models.PROTECT, related_name="images")
    storage_name = models.CharField(max_length=80, unique=True, editable=False)
    original_name = models.CharField(max_length=255)
    content_type = models.CharField(max_length=40)
    size_bytes = models.PositiveBigIntegerField()
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64, db_index=True)
    uploaded_at = models.DateTimeField(default=timezone.now, db_index=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-uploaded_at", "-id"]

    def __str__(self) -> str:
        return f"Image {self.pk} ({self.original_name})"

    @property
    def display_width(self) -> int:
        """The width the frame is shown at: a squashed 4:3 camera frame (224x224, core.aspect) widened
        back, so that its cells are seen at their true shape; any other frame as it is."""
        return round(self.width * x_scale_of((self.width, self.height)))

    def get_absolute_url(self) -> str:
        return reverse("analyses:image", args=[self.pk])

    @property
    def signed_review(self) -> ImageReview | None:
        """The reviewer's sign-off of this image, or None (uses ``select_related("review")`` when the query did)."""
        try:
            return self.review  # type: ignore[no-any-return]
        except ImageReview.DoesNotExist:
            return None


class QueuedJob(models.Model):
    """One model server call run by a job (portal.jobs): its state machine, shared by the leukemia
    analyses (one per image and model) and the cell analysis (one per image)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        REJECTED = "rejected", "Rejected"

    class Stage(models.TextChoices):
        """Where a pending analysis is (meaningless once final)."""

        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running on the model server"
        WAITING = "waiting", "Waiting for the model server"
        RETRYING = "retrying", "Retrying after a model server error"

    model_name = models.CharField(max_length=40)
    model_version = models.CharField(max_length=20, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    timing_ms = models.JSONField(default=dict, blank=True)
    latency_ms = models.FloatField(null=True, blank=True, help_text="Round trip measured by the portal")
    error_code = models.CharField(max_length=40, blank=True)
    error_message = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Attempts that ended in a model server error")
    stage = models.CharField(max_length=10, choices=Stage.choices, default=Stage.QUEUED)
    stage_since = models.DateTimeField(default=timezone.now)
    waiting_since = models.DateTimeField(null=True, blank=True, help_text="Model server unreachable since")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=80, blank=True, help_text="host:pid of the worker running it")
    locked_until = models.DateTimeField(null=True, blank=True, help_text="The running worker's lease")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        abstract = True

    @property
    def refusal_text(self) -> str:
        """The model server's refusal, in words a technologist can act on."""
        return REFUSAL_TEXTS.get(self.error_code, self.error_message or self.error_code)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def close(self, now: datetime) -> None:
        """The job ends now: no lease, no retry planned (the caller sets the final status and saves)."""
        self.locked_until = None
        self.next_attempt_at = None
        self.completed_at = now
        self.stage_since = now

    def progress_text(self) -> str:
        """What a user should read about where this analysis is (one line, no jargon)."""
        if self.status == self.Status.DONE:
            return "Done"
        if self.status == self.Status.REJECTED:
            return f"Refused: {self.refusal_text}"
        if self.status == self.Status.FAILED:
            return f"Failed: {self.error_message}"
        if self.stage == self.Stage.WAITING and self.waiting_since:
            since = timezone.localtime(self.waiting_since).strftime("%H:%M:%S")
            return f"Waiting for the model server since {since} (not answering); retried automatically"
        if self.stage == self.Stage.RETRYING:
            at = timezone.localtime(self.next_attempt_at).strftime("%H:%M:%S") if self.next_attempt_at else "soon"
            return (
                f"Model server error on attempt {self.attempts} of {settings.PORTAL_MAX_ATTEMPTS}; next attempt at {at}"
            )
        if self.stage == self.Stage.RUNNING:
            return "Running on the model server"
        return f"Queued since {timezone.localtime(self.stage_since).strftime('%H:%M:%S')}"


class Analysis(QueuedJob):
    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="analyses")
    label = models.CharField(max_length=10, choices=LABEL_CHOICES, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    probabilities = models.JSONField(default=dict, blank=True)
    malignant_probability = models.FloatField(null=True, blank=True)
    abstained = models.BooleanField(default=False)
    abstain_reason = models.CharField(
        max_length=40, blank=True, help_text="low_confidence or benign_not_confirmed (the model's safety threshold)"
    )
    quality = models.JSONField(default=dict, blank=True)
    heatmap_name = models.CharField(max_length=80, blank=True, editable=False)
    heatmap_label = models.CharField(max_length=10, blank=True)

    class Meta:
        verbose_name_plural = "analyses"
        ordering = ["image_id", "model_name"]
        constraints = [models.UniqueConstraint(fields=["image", "model_name"], name="one_analysis_per_image_model")]
        permissions = [
            ("sign_off_analysis", "Can sign off (review) analyses"),
            ("export_analyses", "Can export analyses and reports"),
        ]

    def __str__(self) -> str:
        return f"Analysis {self.pk} {self.model_name} [{self.status}]"

    def get_absolute_url(self) -> str:
        return reverse("analyses:analysis", args=[self.pk])

    @property
    def signed_review(self) -> Review | None:
        """The sign-off, or None; uses ``select_related``/``prefetch_related("review")`` when the query did."""
        try:
            return self.review  # type: ignore[no-any-return]
        except Review.DoesNotExist:
            return None

    @property
    def is_signed(self) -> bool:
        """Its image is signed off (or, before per-image sign-off, the analysis itself was)."""
        if not self.pk:
            return False
        return image_is_signed(self.image_id) or Review.objects.filter(analysis_id=self.pk).exists()

    @property
    def top_class(self) -> str:
        """The most probable class (shown beside an abstention, never as the label)."""
        if not self.probabilities:
            return ""
        return max(CLASS_LABELS, key=lambda c: float(self.probabilities.get(c, 0.0)))

    @property
    def abstain_text(self) -> str:
        """Why the model abstained, in the contract's words (empty when it answered or the reason is unknown)."""
        return ABSTAIN_MESSAGES.get(self.abstain_reason, "") if self.abstained else ""

    def probability_rows(self) -> list[tuple[str, float]]:
        """(class, probability) in contract order, for charts."""
        return [(c, float(self.probabilities.get(c, 0.0))) for c in CLASS_LABELS if self.probabilities]

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding and self.is_signed:
            raise ImmutableError(f"analysis {self.pk} is signed off and cannot change")
        super().save(*args, **kwargs)


class SignOff(models.Model):
    """What every sign-off records (who, the final class, the comment, when); never changes once saved."""

    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    reviewer_name = models.CharField(max_length=150)
    final_label = models.CharField(max_length=10, choices=LABEL_CHOICES)
    comment = models.TextField(blank=True)
    signed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        abstract = True
        ordering = ["-signed_at"]

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding:
            raise ImmutableError("a review is signed and cannot change")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise ImmutableError("a review is signed and cannot be deleted")


class Review(SignOff):
    """Per-model sign-off of earlier versions (read-only: new sign-offs are ImageReviews)."""

    class Decision(models.TextChoices):
        AGREE = "agree", "Agree with the model"
        RECLASSIFY = "reclassify", "Reclassify"

    analysis = models.OneToOneField(Analysis, on_delete=models.PROTECT, related_name="review")
    decision = models.CharField(max_length=12, choices=Decision.choices)

    class Meta(SignOff.Meta):
        pass

    def __str__(self) -> str:
        return f"Review of analysis {self.analysis_id}: {self.final_label} by {self.reviewer_name}"


# --- cell-level analysis (the cell model, core.registry.CELL_REGISTRY) ---------------------------

#: The model's cell types (Cell.label): the model never says "artefact".
CELL_LABEL_CHOICES = [(c, CELL_DESCRIPTIONS.get(c, c)) for c in CELL_CLASSES]
#: What a technologist may set (Cell.reviewed_label, the reclassify forms): the model's types, then
#: "Artefact (not a cell)", which takes the detection out of the differential.
REVIEWED_LABEL_CHOICES = [(c, describe(c)) for c in REVIEW_LABELS]


class ImageReview(SignOff):
    """The reviewer's one decision on an image: agree with the consensus of its models, or reclassify.

    ``consensus_label`` is what the consensus said when it was signed (empty: it referred the image);
    ``evidence`` keeps each finished model's answer as the reviewer saw it (model -> version, status,
    label, abstained, probabilities).
    """

    class Decision(models.TextChoices):
        AGREE = "agree", "Agree with the consensus"
        RECLASSIFY = "reclassify", "Reclassify"

    image = models.OneToOneField(Image, on_delete=models.PROTECT, related_name="review")
    decision = models.CharField(max_length=12, choices=Decision.choices)
    consensus_label = models.CharField(max_length=10, choices=LABEL_CHOICES, blank=True)
    evidence = models.JSONField(default=dict)

    class Meta(SignOff.Meta):
        pass

    def __str__(self) -> str:
        return f"Review of image {self.image_id}: {self.final_label} by {self.reviewer_name}"

    @property
    def changed_consensus(self) -> bool:
        return self.final_label != self.consensus_label


def image_is_signed(image_id: int) -> bool:
    """A reviewer signed off the frame (or, before per-image sign-off, any of its analyses): the sign-off
    covers its analyses and its cells."""
    return (
        ImageReview.objects.filter(image_id=image_id).exists()
        or Review.objects.filter(analysis__image_id=image_id).exists()
    )


class CellAnalysis(QueuedJob):
    """The cell model run once per image: every white cell found, outlined and typed (``cells``)."""

    image = models.OneToOneField(Image, on_delete=models.PROTECT, related_name="cell_analysis")
    annotated_name = models.CharField(max_length=80, blank=True, editable=False)
    counts = models.JSONField(default=dict, blank=True, help_text="The model's count per cell type")

    class Meta:
        verbose_name_plural = "cell analyses"
        ordering = ["image_id"]

    def __str__(self) -> str:
        return f"Cell analysis {self.pk} of image {self.image_id} [{self.status}]"


class Cell(models.Model):
    """One white cell (or platelet, erythroblast) the cell model found in a frame, in image pixels.

    ``label`` is the model's (empty when it abstained); ``reviewed_label`` the technologist's
    reclassification (null until then), which may also be "artefact": the detection is not a cell and
    is left out of the differential. A cell the model missed is added by hand (``manual``: no model label,
    no score, no outlines; its type is ``reviewed_label``). Once the frame is signed off the cell cannot
    change.
    """

    cell_analysis = models.ForeignKey(CellAnalysis, on_delete=models.PROTECT, related_name="cells")
    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="cells")
    index = models.PositiveIntegerField(help_text="Position in the model's answer (cells added by hand follow)")
    box = models.JSONField(help_text="[x0, y0, x1, y1] in input-image pixels")
    score = models.FloatField(null=True, blank=True, help_text="The detection score (none for a cell added by hand)")
    manual = models.BooleanField(
        default=False, help_text="Added by a technologist: a cell the model missed (its type is reviewed_label)"
    )
    label = models.CharField(max_length=20, choices=CELL_LABEL_CHOICES, blank=True)
    probabilities = models.JSONField(default=dict, blank=True)
    abstained = models.BooleanField(default=False)
    nucleus_polygon = models.JSONField(default=list, blank=True)
    cell_polygon = models.JSONField(default=list, blank=True)
    nucleus_area_px = models.PositiveIntegerField(null=True, blank=True)
    cell_area_px = models.PositiveIntegerField(null=True, blank=True)
    nc_ratio = models.FloatField(null=True, blank=True)
    reviewed_label = models.CharField(max_length=20, choices=REVIEWED_LABEL_CHOICES, null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["image_id", "index"]
        constraints = [models.UniqueConstraint(fields=["cell_analysis", "index"], name="one_cell_per_index")]
        permissions = [("reclassify_cell", "Can reclassify a cell (differential)")]

    def __str__(self) -> str:
        return f"Cell {self.pk} of image {self.image_id}: {self.final_label}"

    @property
    def final_label(self) -> str:
        """The technologist's type ("artefact" included), else the model's; "unclassified" when the model
        abstained."""
        return self.reviewed_label or ("" if self.abstained else self.label) or UNCLASSIFIED

    @property
    def top_class(self) -> str:
        """The most probable type (shown beside an abstention, never as the label)."""
        if not self.probabilities:
            return ""
        return max(CELL_CLASSES, key=lambda c: float(self.probabilities.get(c, 0.0)))

    @property
    def confidence(self) -> float | None:
        """The probability of the model's label (of its most probable type when it abstained)."""
        key = self.label or self.top_class
        return float(self.probabilities[key]) if key in self.probabilities else None

    @property
    def colour(self) -> str:
        """The type's drawing colour, as on the cell model's annotated image (core.cell_answer)."""
        return CELL_COLOURS.get(self.final_label, CELL_COLOURS[UNCLASSIFIED])

    @property
    def is_reviewed(self) -> bool:
        return bool(self.reviewed_label)

    # SVG overlay geometry (the page draws boxes and outlines over the original image)
    @property
    def box_width(self) -> int:
        return int(self.box[2]) - int(self.box[0])

    @property
    def box_height(self) -> int:
        return int(self.box[3]) - int(self.box[1])

    @property
    def nucleus_points(self) -> str:
        return " ".join(f"{x:g},{y:g}" for x, y in self.nucleus_polygon)

    @property
    def cell_points(self) -> str:
        return " ".join(f"{x:g},{y:g}" for x, y in self.cell_polygon)

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding and image_is_signed(self.image_id):
            raise ImmutableError(f"cell {self.pk}: its frame is signed off and cannot change")
        super().save(*args, **kwargs)


class SpecimenReview(SignOff):
    """The reviewer's one sign-off of a specimen: agree with its conclusion or set the specimen's class,
    always with an interpretive comment.

    ``conclusion_label`` is what the conclusion said when it was signed (empty: it referred);
    ``evidence`` keeps the whole conclusion as the reviewer saw it (frames, checks, the pooled differential
    with the blast percentage and its interval). Like every sign-off it never changes.
    """

    class Decision(models.TextChoices):
        AGREE = "agree", "Agree with the specimen conclusion"
        RECLASSIFY = "reclassify", "Set the specimen's class myself"

    specimen = models.OneToOneField(Specimen, on_delete=models.PROTECT, related_name="review")
    decision = models.CharField(max_length=12, choices=Decision.choices)
    conclusion_label = models.CharField(max_length=10, choices=LABEL_CHOICES, blank=True)
    blast_percent = models.FloatField(null=True, blank=True, help_text="Blasts, % of the white cells, when signed")
    evidence = models.JSONField(default=dict)

    class Meta(SignOff.Meta):
        pass

    def __str__(self) -> str:
        return f"Review of specimen {self.specimen_id}: {self.final_label} by {self.reviewer_name}"


def specimen_is_signed(specimen_id: int) -> bool:
    """A reviewer signed the specimen off: it takes no more images, its conclusion is final."""
    return SpecimenReview.objects.filter(specimen_id=specimen_id).exists()
