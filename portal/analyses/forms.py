from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from core.registry import CLASS_DESCRIPTIONS
from portal.analyses.conclusion import class_description as _name
from portal.analyses.models import CLASS_LABELS, ImageReview
from portal.analyses.validation import ValidatedImage, megabytes, over_the_limit_text, validate_image_bytes
from portal.patients.models import Specimen

__all__ = [
    "ALL_MODELS",
    "SIGN_OFF_TEXTS",
    "ExportForm",
    "RefusedFile",
    "ReviewForm",
    "UploadForm",
    "too_many_files_text",
]

ALL_MODELS = "all"


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleImageField(forms.FileField):
    """Several files in one field: at least one, at most PORTAL_MAX_FILES_PER_UPLOAD; cleans to the list
    of uploaded files (each is validated by :meth:`UploadForm.clean_images`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput(attrs={"accept": "image/jpeg,image/png,image/bmp,image/tiff"}))
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        files = list(data) if isinstance(data, list | tuple) else ([data] if data else [])
        if not files:
            raise ValidationError("Choose at least one image.", code="required")
        limit = settings.PORTAL_MAX_FILES_PER_UPLOAD
        if len(files) > limit:
            raise ValidationError(too_many_files_text(len(files)), code="too_many")
        return files


def too_many_files_text(chosen: int | None = None) -> str:
    """Why an upload with too many files was refused (``chosen``: how many, when known)."""
    limit = settings.PORTAL_MAX_FILES_PER_UPLOAD
    count = f"you chose {chosen}; " if chosen else ""
    return f"At most {limit} images per upload: {count}nothing was saved. Choose {limit} or fewer and upload again."


@dataclass(frozen=True)
class RefusedFile:
    """A file of an upload that was not saved, and why (the contract's code and a sentence)."""

    name: str
    code: str
    reason: str
    size_bytes: int | None

    def as_audit(self) -> dict[str, Any]:
        return {"name": self.name[:255], "code": self.code, "reason": self.reason[:300], "bytes": self.size_bytes}


def model_choices() -> list[tuple[str, str]]:
    return [(ALL_MODELS, f"All {len(settings.PORTAL_MODELS)} models"), *[(m, m) for m in settings.PORTAL_MODELS]]


class SpecimenChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.accession}: {obj.patient.name} (MRN {obj.patient.mrn}), collected {obj.collected_at:%Y-%m-%d}"


class UploadForm(forms.Form):
    """The specimen, the images and the model(s). Each file is validated on its own: the good ones are
    ``cleaned_data["images"]``, the others :attr:`refused` (name, code, reason); only when no file is
    good is the field itself invalid. The view saves the good files and lists the refused ones."""

    # a signed-off specimen takes no more images (portal.actions.uploads.upload_images refuses them too)
    specimen = SpecimenChoiceField(
        queryset=Specimen.objects.filter(review__isnull=True).select_related("patient").order_by("-collected_at")
    )
    images = MultipleImageField()
    model = forms.ChoiceField(choices=model_choices, initial=ALL_MODELS)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused: list[RefusedFile] = []
        self.fields["images"].help_text = (
            f"Up to {settings.PORTAL_MAX_FILES_PER_UPLOAD} images (JPEG, PNG, BMP, TIFF), at most "
            f"{megabytes(settings.PORTAL_MAX_UPLOAD_BYTES)} each. A file that cannot be used is listed with "
            "the reason; the others are saved."
        )

    def clean_images(self) -> list[ValidatedImage]:
        limit = settings.PORTAL_MAX_UPLOAD_BYTES
        accepted: list[ValidatedImage] = []
        self.refused = []
        for upload in self.cleaned_data["images"]:
            name = upload.name or "upload"
            if upload.size is not None and upload.size > limit:
                reason = over_the_limit_text(name, upload.size, limit)
                self.refused.append(RefusedFile(name, "image_too_large", reason, upload.size))
                continue
            try:
                accepted.append(validate_image_bytes(name, upload.read()))
            except ValidationError as exc:
                self.refused.append(RefusedFile(name, str(exc.code or "refused"), " ".join(exc.messages), upload.size))
        if not accepted:
            raise ValidationError([r.reason for r in self.refused], code="all_refused")
        return accepted

    def model_names(self) -> list[str]:
        chosen = self.cleaned_data["model"]
        return list(settings.PORTAL_MODELS) if chosen == ALL_MODELS else [chosen]


#: What the sign-off buttons say: exactly what signing records (the class's full name) and how it was reached.
#: portal/static/portal/sign_off.js fills in the same texts as the reviewer changes the form.
SIGN_OFF_TEXTS: dict[str, str] = {
    "agree": "Sign off as {name} (agreeing with the consensus)",
    "reclassify": "Sign off as {name} (reclassified)",
    "set": "Sign off as {name} (your label: the models reached no consensus)",
    "incomplete": "Choose the class to sign off",
}


class ReviewForm(forms.Form):
    """One decision per image: agree with the consensus, or reclassify with a label and a comment.

    ``consensus_label``: the consensus to agree with; None when the models reached none, and then
    reclassifying (choosing the label) is the only choice offered.

    The form says what signing records before it is sent (:meth:`will_record`, :meth:`button_text`),
    and carries it back (``recorded_label``, a hidden field the page's script keeps equal to what the
    buttons say): a form whose choices would record anything else is refused, as is "agree" with another
    class picked. A refused form comes back exactly as the reviewer left it, with the errors beside
    the fields.
    """

    decision = forms.ChoiceField(choices=ImageReview.Decision.choices, widget=forms.RadioSelect)
    final_label = forms.ChoiceField(
        choices=[("", "(choose a class)"), *[(c, _name(c)) for c in CLASS_LABELS]],
        required=False,
        label="Reclassify as",
    )
    comment = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}), required=False, help_text="Required when reclassifying."
    )
    recorded_label = forms.CharField(widget=forms.HiddenInput, required=False)

    def __init__(self, *args: Any, consensus_label: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consensus_label = consensus_label
        field = self.fields["decision"]
        assert isinstance(field, forms.ChoiceField)
        if consensus_label:
            field.choices = [
                ("agree", f"Agree with the consensus: {_name(consensus_label)}"),
                ("reclassify", "Reclassify"),
            ]
            field.initial = "agree"
        else:
            field.choices = [("reclassify", "Set the label (the models reached no consensus)")]
            field.initial = "reclassify"
            self.fields["final_label"].label = "Class"

    def chosen(self) -> tuple[str, str]:
        """(decision, class) as the form stands: what was sent for a bound form, else the initial choice."""
        if self.is_bound:
            return str(self.data.get("decision", "")), str(self.data.get("final_label", ""))
        return str(self.fields["decision"].initial or ""), ""

    def will_record(self) -> str:
        """The class signing would record with the form as it stands ("" while that is not decided)."""
        decision, label = self.chosen()
        if decision == ImageReview.Decision.AGREE:
            return self.consensus_label or ""
        if decision == ImageReview.Decision.RECLASSIFY and label in CLASS_LABELS:
            return label
        return ""

    def kind(self) -> str:
        """Which of SIGN_OFF_TEXTS describes the form as it stands."""
        decision, _ = self.chosen()
        if not self.will_record():
            return "incomplete"
        if decision == ImageReview.Decision.AGREE:
            return "agree"
        return "reclassify" if self.consensus_label else "set"

    def button_text(self) -> str:
        return SIGN_OFF_TEXTS[self.kind()].format(name=_name(self.will_record()))

    def script_config(self) -> dict[str, Any]:
        """What portal/static/portal/sign_off.js needs to say the same as :meth:`button_text`."""
        return {"consensus": self.consensus_label or "", "names": dict(CLASS_DESCRIPTIONS), "texts": SIGN_OFF_TEXTS}

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        decision, label = data.get("decision"), data.get("final_label") or ""
        comment = (data.get("comment") or "").strip()
        if decision == ImageReview.Decision.AGREE and label and label != self.consensus_label:
            self.add_error(
                "final_label",
                f"You chose to agree with the consensus ({_name(self.consensus_label)}) but picked {_name(label)}: "
                f"choose Reclassify to record {_name(label)}, or set the class back to “(choose a class)”.",
            )
        if decision == ImageReview.Decision.RECLASSIFY:
            if not label:
                self.add_error("final_label", "Choose the class to record.")
            if not comment:
                self.add_error("comment", "A reclassification needs a comment: say why.")
        if decision and not self.errors:
            recorded, shown = self.will_record(), data.get("recorded_label") or ""
            if shown != recorded:
                raise ValidationError(
                    f"The form would record {_name(recorded)}, not {_name(shown) or 'what the button said'}: "
                    "nothing was signed. Check your choice: the button now says what will be recorded.",
                    code="recorded_mismatch",
                )
        return data


class ExportForm(forms.Form):
    start = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"))
    end = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("start") and data.get("end") and data["start"] > data["end"]:
            raise ValidationError("The start date is after the end date.")
        return data
