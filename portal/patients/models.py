"""Patients and their specimens (smears)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from portal.patients.validators import validate_date_of_birth, validate_mrn, validate_printable

__all__ = ["Patient", "Specimen"]


class Patient(models.Model):
    class Sex(models.TextChoices):
        FEMALE = "F", "Female"
        MALE = "M", "Male"
        OTHER = "O", "Other"
        UNKNOWN = "U", "Unknown"

    mrn = models.CharField(
        "MRN", max_length=32, unique=True, help_text="Medical record number", validators=[validate_mrn]
    )
    name = models.CharField(max_length=200, db_index=True, validators=[validate_printable])
    date_of_birth = models.DateField(validators=[validate_date_of_birth])
    sex = models.CharField(max_length=1, choices=Sex.choices, default=Sex.UNKNOWN)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["name", "mrn"]

    def __str__(self) -> str:
        return f"{self.name} (MRN {self.mrn})"

    def get_absolute_url(self) -> str:
        return reverse("patients:detail", args=[self.pk])


class Specimen(models.Model):
    class Kind(models.TextChoices):
        PERIPHERAL_BLOOD = "PB", "Peripheral blood smear"
        BONE_MARROW = "BM", "Bone marrow aspirate smear"

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="specimens")
    accession = models.CharField(
        max_length=40, unique=True, help_text="Lab accession number", validators=[validate_printable]
    )
    kind = models.CharField(max_length=2, choices=Kind.choices, default=Kind.PERIPHERAL_BLOOD)
    stain = models.CharField(max_length=40, default="Giemsa")
    collected_at = models.DateTimeField(default=timezone.now)
    collected_by = models.CharField(max_length=150, blank=True)  # free text; may be empty
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-collected_at", "-id"]

    def __str__(self) -> str:
        return f"Specimen {self.accession}"

    def get_absolute_url(self) -> str:
        return reverse("patients:specimen", args=[self.pk])
