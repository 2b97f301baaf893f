from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.core.validators import MaxLengthValidator
from django.http import QueryDict
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.registry import CELL_CLASSES
from portal.analyses.conclusion import CHECKS
from portal.analyses.consensus import ENSEMBLE, MAJORITY, REFER_REASONS, Consensus, consensus
from portal.analyses.differential import BLAST, BLAST_THRESHOLD_PERCENT, CATEGORIES, TARGET_COUNTS, WHITE_CATEGORIES
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
    SpecimenReview,
    specimen_is_signed,
)
from portal.patients.models import Patient, Specimen

__all__ = [
    "AddCellSerializer",
    "StrictFields",
    "AnalysisSerializer",
    "SpecimenReviewSerializer",
    "SpecimenSignOffSerializer",
    "SpecimenSummarySerializer",
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


class StrictFields(serializers.Serializer):
    # A request serializer that refuses fields it does not know (400 naming them) instead of ignoring
    # them: a misspelt field is a mistake to report, not to drop; and, in a JSON body, values of another
    # type than the field's (DRF would turn 0 into "0"). Its request schema says so (additionalProperties:
    # false, portal.api.schema). Text is taken as sent: DRF would strip surrounding whitespace first, so
    # that "Ada" followed by 300 spaces passed a 200-character limit the schema states, and " Ada" passed
    # the rule against surrounding spaces; here both answer 400. A comment, not a docstring:
    # drf-spectacular shows an inherited docstring as the description of every serializer built on this.

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            if isinstance(field, serializers.CharField):
                field.trim_whitespace = False

    def to_internal_value(self, data: Any) -> Any:
        if hasattr(data, "keys"):
            unknown = sorted(set(data.keys()) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown}, code="unknown_field")
        if isinstance(data, dict) and not isinstance(data, QueryDict):  # JSON: its types are the schema's
            wrong = {
                name: [f"Incorrect type: expected {_JSON_TYPES[kind][1]}."]
                for name, value in data.items()
                if value is not None
                and (kind := _json_kind(self.fields[name])) is not None
                and not _is_json_type(value, kind)
            }
            if wrong:
                raise serializers.ValidationError(wrong, code="invalid_type")
        return super().to_internal_value(data)


#: a field's JSON type, as the schema names it: (Python types, in words)
_JSON_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "string": ((str,), "a string"),
    "integer": ((int,), "an integer"),
    "boolean": ((bool,), "true or false"),
    "array": ((list,), "an array"),
}


def _json_kind(field: serializers.Field) -> str | None:
    if isinstance(field, serializers.BooleanField):
        return "boolean"
    if isinstance(field, serializers.IntegerField | serializers.PrimaryKeyRelatedField):
        return "integer"
    if isinstance(field, serializers.ListField | serializers.ManyRelatedField):
        return "array"
    if isinstance(
        field, serializers.CharField | serializers.ChoiceField | serializers.DateField | serializers.DateTimeField
    ):
        return "string"
    return None


def _is_json_type(value: Any, kind: str) -> bool:
    if kind == "integer" and isinstance(value, bool):
        return False  # JSON true is not the integer 1
    return isinstance(value, _JSON_TYPES[kind][0])


class PatientSerializer(StrictFields, serializers.ModelSerializer):
    class Meta:
        model = Patient
        fields = ["id", "mrn", "name", "date_of_birth", "sex", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]


class SpecimenSerializer(StrictFields, serializers.ModelSerializer):
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


class ReviewCreateSerializer(StrictFields):
    """A sign-off: agree with the consensus of the models, or reclassify (with final_label and a comment)."""

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
    agreement = serializers.CharField(
        help_text="'<models ranking the label first> of <finished models>' (', <n> of them abstaining' when some "
        "abstained under their own thresholds), or 'no consensus'"
    )
    votes = serializers.DictField(child=serializers.IntegerField(), help_text="labels given by the finished models")
    ranked_first = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="the class each finished model ranks first: its label, or an abstainer's most probable class "
        "(out-of-distribution abstentions rank none)",
    )
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
        "ranked_first": agreed.ranked_first,
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


class UploadSerializer(StrictFields):
    """multipart/form-data: specimen, images (one or more files), model (a model name or "all")."""

    specimen = serializers.PrimaryKeyRelatedField(queryset=Specimen.objects.all())
    images = serializers.ListField(child=serializers.FileField(), allow_empty=False, min_length=1)
    model = serializers.ChoiceField(choices=[ALL_MODELS], default=ALL_MODELS, help_text='a model, or "all"')

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # the served models and the limit are settings: read them now
        cast(serializers.ChoiceField, self.fields["model"]).choices = [ALL_MODELS, *settings.PORTAL_MODELS]
        limit = settings.PORTAL_MAX_FILES_PER_UPLOAD
        images = cast(serializers.ListField, self.fields["images"])
        images.max_length = limit
        images.validators.append(MaxLengthValidator(limit, message=f"at most {limit} images per upload"))

    def validate_model(self, value: str) -> list[str]:
        return list(settings.PORTAL_MODELS) if value == ALL_MODELS else [value]

    def validate_specimen(self, value: Specimen) -> Specimen:
        if specimen_is_signed(value.pk):
            raise serializers.ValidationError("this specimen is signed off: it takes no more images")
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
            "manual",
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


class ReclassifySerializer(StrictFields):
    """A cell's new type."""

    label = serializers.ChoiceField(  # type: ignore[assignment]  # the field is "label"
        choices=REVIEWED_LABEL_CHOICES,
        help_text="a cell type, or 'artefact': not a cell (left out of the differential)",
    )


class DifferentialBodySerializer(serializers.Serializer):
    """The differential's figures (portal.analyses.differential.Differential.as_dict)."""

    white_cells = serializers.IntegerField(help_text="the denominator: white cells typed + unclassified")
    reviewed = serializers.IntegerField(help_text="detections a technologist reclassified (artefacts included)")
    excluded = serializers.IntegerField(help_text="detections a technologist marked as artefacts (not cells)")
    added = serializers.IntegerField(help_text="cells a technologist added by hand (the model missed them)")
    counts = serializers.DictField(
        child=serializers.IntegerField(),
        help_text=f"per category ({', '.join(CATEGORIES)}): every category, zeros included",
    )
    percent_of_white_cells = serializers.DictField(
        child=serializers.FloatField(),
        help_text=f"0-100, of white_cells, per white category ({', '.join(WHITE_CATEGORIES)}); 0 when none",
    )
    interval_95_of_white_cells = serializers.DictField(
        child=serializers.ListField(child=serializers.FloatField(), min_length=2, max_length=2, allow_null=True),
        help_text="per white category: the percentage's 95% Wilson score interval [low, high]; null with no white cell",
    )
    nrbc_per_100_wbc = serializers.FloatField(
        allow_null=True, help_text="nucleated red cells (erythroblasts) per 100 white cells; null with no white cell"
    )
    blast_percent = serializers.FloatField(
        allow_null=True, help_text=f"{BLAST}s, percent of the white cells; null with no white cell"
    )
    blast_interval_95 = serializers.ListField(
        child=serializers.FloatField(),
        min_length=2,
        max_length=2,
        allow_null=True,
        help_text="the blast percentage's 95% Wilson score interval [low, high]",
    )
    blast_threshold_percent = serializers.FloatField(
        help_text=f"the blast line that defines acute leukaemia (WHO, ICC): {BLAST_THRESHOLD_PERCENT:g}"
    )
    blasts_over_threshold = serializers.BooleanField(help_text="blast_percent is at or over the line")


class DifferentialSerializer(DifferentialBodySerializer):
    """The specimen's differential (portal.analyses.differential), as a manual differential reports it:
    percentages of the white cells only (typed + unclassified) with their 95% intervals; blasts against
    the acute-leukaemia line; nucleated red cells per 100 white cells; platelets as a count; artefacts
    (a technologist's "not a cell") excluded from every figure; the count against the lab's target."""

    specimen = serializers.IntegerField()
    frames = serializers.IntegerField(help_text="frames with a finished cell analysis")
    signed_frames = serializers.IntegerField(help_text="frames a reviewer signed off (their cells are locked)")
    target_count = serializers.ChoiceField(
        choices=list(TARGET_COUNTS), help_text="white cells this lab counts per specimen"
    )
    target_reached = serializers.BooleanField()


class CheckSerializer(serializers.Serializer):
    code = serializers.ChoiceField(choices=list(CHECKS), help_text="; ".join(f"{k}: {v}" for k, v in CHECKS.items()))
    image_id = serializers.IntegerField(allow_null=True)
    text = serializers.CharField(help_text="why the specimen is referred, in words")


class FrameSummarySerializer(serializers.Serializer):
    image_id = serializers.IntegerField()
    name = serializers.CharField()
    label = serializers.ChoiceField(  # type: ignore[assignment]  # the field is "label"
        choices=list(CLASS_LABELS), allow_null=True, help_text="signed label where signed, else the consensus"
    )
    source = serializers.ChoiceField(choices=["signed", "consensus", ""], help_text="where the label comes from")  # type: ignore[assignment]
    consensus_label = serializers.ChoiceField(choices=list(CLASS_LABELS), allow_null=True)
    signed_label = serializers.ChoiceField(choices=list(CLASS_LABELS), allow_null=True)
    referred = serializers.BooleanField(help_text="no consensus and not signed off")
    why = serializers.CharField(allow_blank=True, help_text="why it has no label")
    pending = serializers.BooleanField()
    has_result = serializers.BooleanField()
    cells_done = serializers.BooleanField()
    white_cells = serializers.IntegerField()
    blasts = serializers.IntegerField()


class SpecimenReviewSerializer(serializers.ModelSerializer):
    """The specimen's sign-off: the reviewer's class and interpretive comment, the conclusion as evidence."""

    class Meta:
        model = SpecimenReview
        fields = [
            "id",
            "specimen",
            "reviewer_name",
            "decision",
            "final_label",
            "conclusion_label",
            "blast_percent",
            "comment",
            "evidence",
            "signed_at",
        ]
        read_only_fields = fields


class SpecimenSummarySerializer(serializers.Serializer):
    """The specimen's one conclusion (portal.analyses.conclusion) and, once signed, its sign-off."""

    specimen = serializers.IntegerField()
    label = serializers.ChoiceField(  # type: ignore[assignment]  # the field is "label"
        choices=list(CLASS_LABELS), allow_null=True, help_text="the specimen's class; null: refer (see reasons)"
    )
    refer = serializers.BooleanField()
    text = serializers.CharField(help_text="the conclusion in one paragraph")
    reasons = serializers.ListField(child=serializers.CharField(), help_text="every reason to refer")
    notes = serializers.ListField(child=serializers.CharField(), help_text="remarks that do not refer")
    checks = CheckSerializer(many=True, help_text="failed agreement checks between frames and their cells")
    frames = FrameSummarySerializer(many=True)
    referred_frames = serializers.ListField(child=serializers.IntegerField(), help_text="image ids")
    differential = DifferentialBodySerializer()
    target_count = serializers.ChoiceField(choices=list(TARGET_COUNTS))
    target_reached = serializers.BooleanField()
    signed_off = SpecimenReviewSerializer(allow_null=True, help_text="the sign-off; null until signed")
    notice = serializers.CharField(help_text="decision support only: the notice every page and export carries")


class SpecimenSignOffSerializer(StrictFields):
    decision = serializers.ChoiceField(
        choices=SpecimenReview.Decision.choices, help_text="agree with the conclusion, or set the class (final_label)"
    )
    final_label = serializers.ChoiceField(
        choices=list(CLASS_LABELS), required=False, allow_null=True, help_text="required to set the class"
    )
    comment = serializers.CharField(help_text="the interpretive comment (required)")


class AddCellSerializer(StrictFields):
    """A cell the model missed: its frame, its box in image pixels, its type."""

    image = serializers.PrimaryKeyRelatedField(queryset=Image.objects.all())
    box = serializers.ListField(
        child=serializers.IntegerField(min_value=0), min_length=4, max_length=4, help_text="[x0, y0, x1, y1]"
    )
    label = serializers.ChoiceField(choices=list(CELL_CLASSES), help_text="the cell's type")  # type: ignore[assignment]
