from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from portal.analyses.models import CLASS_LABELS, ImageReview
from portal.analyses.validation import ValidatedImage, validate_image_bytes
from portal.patients.models import Specimen

__all__ = ["ALL_MODELS", "ExportForm", "ReviewForm", "UploadForm"]

ALL_MODELS = "all"


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleImageField(forms.FileField):
    """Several files in one field; each is validated with Pillow (validate_image_bytes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput(attrs={"accept": "image/jpeg,image/png,image/bmp,image/tiff"}))
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> list[ValidatedImage]:
        files = data if isinstance(data, list | tuple) else ([data] if data else [])
        if not files:
            raise ValidationError("Choose at least one image.", code="required")
        limit = settings.PORTAL_MAX_FILES_PER_UPLOAD
        if len(files) > limit:
            raise ValidationError(f"At most {limit} images per upload.", code="too_many")
        validated: list[ValidatedImage] = []
        errors: list[ValidationError] = []
        for upload in files:
            if upload.size is not None and upload.size > settings.PORTAL_MAX_UPLOAD_BYTES:
                errors.append(ValidationError(f"{upload.name}: file is over the size limit.", code="too_large"))
                continue
            try:
                validated.append(validate_image_bytes(upload.name or "upload", upload.read()))
            except ValidationError as exc:
                errors.append(exc)
        if errors:
            raise ValidationError(errors)
        return validated


def model_choices() -> list[tuple[str, str]]:
    return [(ALL_MODELS, f"All {len(settings.PORTAL_MODELS)} models"), *[(m, m) for m in settings.PORTAL_MODELS]]


class SpecimenChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.accession}: {obj.patient.name} (MRN {obj.patient.mrn}), collected {obj.collected_at:%Y-%m-%d}"


class UploadForm(forms.Form):
    # a signed-off specimen takes no more images (portal.actions.upload_images refuses them too)
    specimen = SpecimenChoiceField(
        queryset=Specimen.objects.filter(review__isnull=True).select_related("patient").order_by("-collected_at")
    )
    images = MultipleImageField(help_text="One or several images (JPEG, PNG, BMP, TIFF)")
    model = forms.ChoiceField(choices=model_choices, initial=ALL_MODELS)

    def model_names(self) -> list[str]:
        chosen = self.cleaned_data["model"]
        return list(settings.PORTAL_MODELS) if chosen == ALL_MODELS else [chosen]


class ReviewForm(forms.Form):
    """One decision per image: agree with the consensus, or reclassify with a label and a comment.

    ``consensus_label``: the consensus to agree with; None when the models reached none, and then
    reclassifying (choosing the label) is the only choice offered.
    """

    decision = forms.ChoiceField(choices=ImageReview.Decision.choices, widget=forms.RadioSelect)
    final_label = forms.ChoiceField(
        choices=[("", "(choose a class)"), *[(c, c) for c in CLASS_LABELS]], required=False, label="Reclassify as"
    )
    comment = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}), required=False, help_text="Required when reclassifying."
    )

    def __init__(self, *args: Any, consensus_label: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["decision"]
        assert isinstance(field, forms.ChoiceField)
        if consensus_label:
            field.choices = [("agree", f"Agree with the consensus: {consensus_label}"), ("reclassify", "Reclassify")]
            field.initial = "agree"
        else:
            field.choices = [("reclassify", "Set the label (the models reached no consensus)")]
            field.initial = "reclassify"


class ExportForm(forms.Form):
    start = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"))
    end = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("start") and data.get("end") and data["start"] > data["end"]:
            raise ValidationError("The start date is after the end date.")
        return data
