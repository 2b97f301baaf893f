from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from portal.analyses.forms import ALL_MODELS
from portal.analyses.models import CLASS_LABELS, Analysis, Image, Review
from portal.patients.models import Patient, Specimen

__all__ = [
    "AnalysisSerializer",
    "ImageSerializer",
    "PatientSerializer",
    "ReviewCreateSerializer",
    "ReviewSerializer",
    "SpecimenSerializer",
    "UploadSerializer",
]


class PatientSerializer(serializers.ModelSerializer):
    class Meta:
        model = Patient
        fields = ["id", "mrn", "name", "date_of_birth", "sex", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]


class SpecimenSerializer(serializers.ModelSerializer):
    class Meta:
        model = Specimen
        fields = ["id", "patient", "accession", "kind", "stain", "collected_at", "collected_by", "notes", "created_at"]
        read_only_fields = ["id", "created_at"]


class ReviewSerializer(serializers.ModelSerializer):
    class Meta:
        model = Review
        fields = ["id", "analysis", "reviewer_name", "decision", "final_label", "comment", "signed_at"]
        read_only_fields = fields


class ReviewCreateSerializer(serializers.Serializer):
    analysis = serializers.PrimaryKeyRelatedField(queryset=Analysis.objects.all())
    decision = serializers.ChoiceField(choices=Review.Decision.choices)
    final_label = serializers.ChoiceField(choices=list(CLASS_LABELS), required=False, allow_null=True)
    comment = serializers.CharField(required=False, allow_blank=True, default="")


class AnalysisSerializer(serializers.ModelSerializer):
    review = ReviewSerializer(read_only=True)
    specimen = serializers.IntegerField(source="image.specimen_id", read_only=True)
    heatmap_url = serializers.SerializerMethodField()
    stage = serializers.SerializerMethodField(help_text="queued, running, waiting or retrying; empty once final")
    progress = serializers.SerializerMethodField(help_text="Where the analysis is, in words")

    class Meta:
        model = Analysis
        fields = [
            "id",
            "image",
            "specimen",
            "model_name",
            "model_version",
            "status",
            "label",
            "confidence",
            "probabilities",
            "malignant_probability",
            "abstained",
            "quality",
            "timing_ms",
            "latency_ms",
            "heatmap_url",
            "error_code",
            "error_message",
            "attempts",
            "stage",
            "progress",
            "created_at",
            "completed_at",
            "review",
        ]
        read_only_fields = fields

    def get_heatmap_url(self, obj: Analysis) -> str | None:
        if not obj.heatmap_name:
            return None
        from django.urls import reverse

        return reverse("analyses:heatmap", args=[obj.pk])

    def get_stage(self, obj: Analysis) -> str:
        return "" if obj.is_final else obj.stage

    def get_progress(self, obj: Analysis) -> str:
        return obj.progress_text()


class ImageSerializer(serializers.ModelSerializer):
    analyses = AnalysisSerializer(many=True, read_only=True)

    class Meta:
        model = Image
        fields = [
            "id",
            "specimen",
            "original_name",
            "content_type",
            "size_bytes",
            "width",
            "height",
            "sha256",
            "uploaded_at",
            "analyses",
        ]
        read_only_fields = fields


class UploadSerializer(serializers.Serializer):
    """multipart/form-data: specimen, images (one or more files), model (a model name or "all")."""

    specimen = serializers.PrimaryKeyRelatedField(queryset=Specimen.objects.all())
    images = serializers.ListField(child=serializers.FileField(), allow_empty=False)
    model = serializers.CharField(default=ALL_MODELS)

    def validate_model(self, value: str) -> list[str]:
        if value == ALL_MODELS:
            return list(settings.PORTAL_MODELS)
        if value not in settings.PORTAL_MODELS:
            raise serializers.ValidationError(f"unknown model {value!r}")
        return [value]

    def validate_images(self, value: list[Any]) -> list[Any]:
        if len(value) > settings.PORTAL_MAX_FILES_PER_UPLOAD:
            raise serializers.ValidationError(f"at most {settings.PORTAL_MAX_FILES_PER_UPLOAD} images per upload")
        return value
