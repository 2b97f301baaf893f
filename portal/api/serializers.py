from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from portal.analyses.consensus import ENSEMBLE, MAJORITY, REFER_REASONS, Consensus, consensus
from portal.analyses.differential import CATEGORIES, WHITE_CATEGORIES
from portal.analyses.forms import ALL_MODELS
from portal.analyses.models import (
    CLASS_LABELS,
    REVIEWED_LABEL_CHOICES,
    Analysis,
    Cell,
    CellAnalysis,
    Image,
    ImageReview,
    Review,
)
from portal.patients.models import Patient, Specimen

__all__ = [
    "AnalysisSerializer",
    "CellAnalysisSerializer",
    "CellSerializer",
    "ConsensusSerializer",
    "DifferentialSerializer",
    "ReclassifySerializer",
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


class ModelReviewSerializer(serializers.ModelSerializer):
    """A per-model sign-off of earlier versions (read-only; sign-off is per image now)."""

    class Meta:
        model = Review
        fields = ["id", "analysis", "reviewer_name", "decision", "final_label", "comment", "signed_at"]
        read_only_fields = fields


class ReviewSerializer(serializers.ModelSerializer):
    """The reviewer's decision on an image: ``final_label`` is the image's result once signed."""

    class Meta:
        model = ImageReview
        fields = [
            "id",
            "image",
            "reviewer_name",
            "decision",
            "final_label",
            "consensus_label",
            "comment",
            "evidence",
            "signed_at",
        ]
        read_only_fields = fields


class ReviewCreateSerializer(serializers.Serializer):
    image = serializers.PrimaryKeyRelatedField(queryset=Image.objects.all())
    decision = serializers.ChoiceField(
        choices=ImageReview.Decision.choices, help_text="agree with the consensus of the models, or reclassify"
    )
    final_label = serializers.ChoiceField(
        choices=list(CLASS_LABELS), required=False, allow_null=True, help_text="required to reclassify"
    )
    comment = serializers.CharField(required=False, allow_blank=True, default="", help_text="required to reclassify")


class AnalysisSerializer(serializers.ModelSerializer):
    image_review = ReviewSerializer(source="image.signed_review", read_only=True, allow_null=True)
    review = ModelReviewSerializer(read_only=True, help_text="per-model sign-off of earlier versions")
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
            "abstain_reason",
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
            "image_review",
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


class CellAnalysisSerializer(serializers.ModelSerializer):
    """Where the image's cell analysis is: its cells (GET /api/cells/?image=) are complete once ``done``."""

    progress = serializers.SerializerMethodField(help_text="Where the cell analysis is, in words")
    cells = serializers.SerializerMethodField(help_text="Cells found (once done)")
    annotated_url = serializers.SerializerMethodField()

    class Meta:
        model = CellAnalysis
        fields = [
            "id",
            "model_name",
            "model_version",
            "status",
            "error_code",
            "error_message",
            "progress",
            "cells",
            "counts",
            "annotated_url",
            "created_at",
            "completed_at",
        ]
        read_only_fields = fields

    def get_progress(self, obj: CellAnalysis) -> str:
        return obj.progress_text()

    def get_cells(self, obj: CellAnalysis) -> int:
        return obj.cells.count()

    def get_annotated_url(self, obj: CellAnalysis) -> str | None:
        from django.urls import reverse

        return reverse("analyses:annotated", args=[obj.image_id]) if obj.annotated_name else None


class ConsensusSerializer(serializers.Serializer):
    """The image's consensus as the portal shows it (portal.analyses.consensus: its rules in its docstring)."""

    label = serializers.ChoiceField(  # type: ignore[assignment]  # the field is "label"
        choices=list(CLASS_LABELS), allow_null=True, help_text="the consensus label; null: refer for manual review"
    )
    refer = serializers.BooleanField(help_text="true: no label, refer the image for manual review (see reason)")
    method = serializers.ChoiceField(
        choices=[ENSEMBLE, MAJORITY], help_text="the fitted ensemble, or the majority vote when it cannot be used"
    )
    reason = serializers.ChoiceField(
        choices=list(REFER_REASONS), allow_null=True, help_text="why it refers (null when it answers)"
    )
    reason_text = serializers.CharField(help_text="the reason in words, as the portal shows it (empty when it answers)")
    agreement = serializers.CharField(help_text="'<votes for the label> of <finished models>', or 'no consensus'")
    votes = serializers.DictField(child=serializers.IntegerField(), help_text="labels given by the finished models")
    answered = serializers.IntegerField(help_text="models that finished, abstentions included")
    abstained = serializers.IntegerField(help_text="finished models that abstained")
    probabilities = serializers.DictField(
        child=serializers.FloatField(), allow_null=True, help_text="the ensemble's pooled probabilities (null: vote)"
    )
    malignant_probability = serializers.FloatField(allow_null=True, help_text="the ensemble's 1 - P(Benign)")
    mean_malignant_probability = serializers.FloatField(
        allow_null=True, help_text="the mean of the finished models' 1 - P(Benign)"
    )
    members_used = serializers.ListField(child=serializers.CharField(), help_text="models the ensemble pooled")
    members_missing = serializers.ListField(
        child=serializers.CharField(), help_text="ensemble members left out (pending, failed, refused, other version)"
    )
    ensemble_version = serializers.CharField(allow_null=True, help_text="the fitted ensemble's version (null: vote)")


def consensus_data(agreed: Consensus | None) -> dict[str, Any] | None:
    """:class:`ConsensusSerializer`'s fields of a consensus (None: no model has finished)."""
    if agreed is None:
        return None
    return {
        "label": agreed.label,
        "refer": agreed.refer,
        "method": agreed.method,
        "reason": agreed.reason,
        "reason_text": agreed.refer_text,
        "agreement": agreed.agreement,
        "votes": agreed.votes,
        "answered": agreed.answered,
        "abstained": agreed.abstained,
        "probabilities": agreed.probabilities,
        "malignant_probability": agreed.malignant_probability,
        "mean_malignant_probability": agreed.mean_malignant_probability,
        "members_used": list(agreed.members_used),
        "members_missing": list(agreed.members_missing),
        "ensemble_version": agreed.ensemble_version,
    }


class ImageSerializer(serializers.ModelSerializer):
    analyses = AnalysisSerializer(many=True, read_only=True)
    cell_analysis = serializers.SerializerMethodField(help_text="The cell model's run on this image (null: not run)")
    consensus = serializers.SerializerMethodField(
        help_text="The consensus of its finished analyses, as the portal shows it (null: none finished yet)"
    )

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
            "consensus",
            "cell_analysis",
        ]
        read_only_fields = fields

    @extend_schema_field(ConsensusSerializer(allow_null=True))
    def get_consensus(self, obj: Image) -> dict[str, Any] | None:
        return consensus_data(consensus(list(obj.analyses.all())))

    @extend_schema_field(CellAnalysisSerializer(allow_null=True))
    def get_cell_analysis(self, obj: Image) -> dict[str, Any] | None:
        job = CellAnalysis.objects.filter(image=obj).first()
        return None if job is None else dict(CellAnalysisSerializer(job).data)


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


class CellSerializer(serializers.ModelSerializer):
    """One cell as the cell model found it (contract: box, polygons, areas in image pixels), plus its review."""

    specimen = serializers.IntegerField(source="image.specimen_id", read_only=True)
    model_name = serializers.CharField(source="cell_analysis.model_name", read_only=True)
    model_version = serializers.CharField(source="cell_analysis.model_version", read_only=True)
    final_label = serializers.ChoiceField(choices=list(CATEGORIES), read_only=True, help_text="reviewed, else model")
    reviewed_by = serializers.SerializerMethodField()
    crop_url = serializers.SerializerMethodField()

    class Meta:
        model = Cell
        fields = [
            "id",
            "image",
            "specimen",
            "model_name",
            "model_version",
            "index",
            "box",
            "score",
            "label",
            "probabilities",
            "abstained",
            "nucleus_polygon",
            "cell_polygon",
            "nucleus_area_px",
            "cell_area_px",
            "nc_ratio",
            "reviewed_label",
            "reviewed_by",
            "reviewed_at",
            "final_label",
            "crop_url",
        ]
        read_only_fields = fields

    def get_reviewed_by(self, obj: Cell) -> str | None:
        return obj.reviewed_by.get_username() if obj.reviewed_by else None

    def get_crop_url(self, obj: Cell) -> str:
        from django.urls import reverse

        return reverse("analyses:cell_crop", args=[obj.pk])


class ReclassifySerializer(serializers.Serializer):
    label = serializers.ChoiceField(  # type: ignore[assignment]  # the field is "label"
        choices=REVIEWED_LABEL_CHOICES,
        help_text="a cell type, or 'artefact': not a cell (left out of the differential)",
    )


class DifferentialSerializer(serializers.Serializer):
    """The specimen's differential (portal.analyses.differential), as a manual differential reports it:
    percentages of the white cells only (typed + unclassified); nucleated red cells per 100 white cells;
    platelets as a count; artefacts (a technologist's "not a cell") excluded from every figure."""

    specimen = serializers.IntegerField()
    white_cells = serializers.IntegerField(help_text="the denominator: white cells typed + unclassified")
    reviewed = serializers.IntegerField(help_text="detections a technologist reclassified (artefacts included)")
    excluded = serializers.IntegerField(help_text="detections a technologist marked as artefacts (not cells)")
    counts = serializers.DictField(
        child=serializers.IntegerField(),
        help_text=f"per category ({', '.join(CATEGORIES)}): every category, zeros included",
    )
    percent_of_white_cells = serializers.DictField(
        child=serializers.FloatField(),
        help_text=f"0-100, of white_cells, per white category ({', '.join(WHITE_CATEGORIES)}); 0 when none",
    )
    nrbc_per_100_wbc = serializers.FloatField(
        allow_null=True, help_text="nucleated red cells (erythroblasts) per 100 white cells; null with no white cell"
    )
    frames = serializers.IntegerField(help_text="frames with a finished cell analysis")
    signed_frames = serializers.IntegerField(help_text="frames a reviewer signed off (their cells are locked)")
