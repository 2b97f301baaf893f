"""Images uploaded for a specimen, one Analysis per (image, model), and the reviewer's sign-off.

An Analysis is created ``pending`` and committed before TorchServe is called; it ends ``done``,
``rejected`` (the model server refused the image: the reason is kept) or ``failed`` (server error;
retried up to PORTAL_MAX_ATTEMPTS). Once a Review exists the analysis is immutable.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from portal.patients.models import Specimen

__all__ = ["CLASS_LABELS", "Analysis", "Image", "ImmutableError", "Review"]

# The four classes, in the order of the inference contract (DESIGN.md section 5).
CLASS_LABELS: tuple[str, ...] = ("Benign", "Early", "Pre", "Pro")
LABEL_CHOICES = [(c, c) for c in CLASS_LABELS]


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

    def get_absolute_url(self) -> str:
        return reverse("analyses:image", args=[self.pk])


class Analysis(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        REJECTED = "rejected", "Rejected"

    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="analyses")
    model_name = models.CharField(max_length=40)
    model_version = models.CharField(max_length=20, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    label = models.CharField(max_length=10, choices=LABEL_CHOICES, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    probabilities = models.JSONField(default=dict, blank=True)
    malignant_probability = models.FloatField(null=True, blank=True)
    abstained = models.BooleanField(default=False)
    quality = models.JSONField(default=dict, blank=True)
    timing_ms = models.JSONField(default=dict, blank=True)
    latency_ms = models.FloatField(null=True, blank=True, help_text="Round trip measured by the portal")
    heatmap_name = models.CharField(max_length=80, blank=True, editable=False)
    heatmap_label = models.CharField(max_length=10, blank=True)
    error_code = models.CharField(max_length=40, blank=True)
    error_message = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    locked_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
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
    def is_signed(self) -> bool:
        return Review.objects.filter(analysis_id=self.pk).exists() if self.pk else False

    @property
    def top_class(self) -> str:
        """The most probable class (shown beside an abstention, never as the label)."""
        if not self.probabilities:
            return ""
        return max(CLASS_LABELS, key=lambda c: float(self.probabilities.get(c, 0.0)))

    def probability_rows(self) -> list[tuple[str, float]]:
        """(class, probability) in contract order, for charts."""
        return [(c, float(self.probabilities.get(c, 0.0))) for c in CLASS_LABELS if self.probabilities]

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding and self.is_signed:
            raise ImmutableError(f"analysis {self.pk} is signed off and cannot change")
        super().save(*args, **kwargs)


class Review(models.Model):
    class Decision(models.TextChoices):
        AGREE = "agree", "Agree with the model"
        RECLASSIFY = "reclassify", "Reclassify"

    analysis = models.OneToOneField(Analysis, on_delete=models.PROTECT, related_name="review")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    reviewer_name = models.CharField(max_length=150)
    decision = models.CharField(max_length=12, choices=Decision.choices)
    final_label = models.CharField(max_length=10, choices=LABEL_CHOICES)
    comment = models.TextField(blank=True)
    signed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-signed_at"]

    def __str__(self) -> str:
        return f"Review of analysis {self.analysis_id}: {self.final_label} by {self.reviewer_name}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding:
            raise ImmutableError("a review is signed and cannot change")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise ImmutableError("a review is signed and cannot be deleted")
