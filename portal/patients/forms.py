from __future__ import annotations

from django import forms

from portal.patients.models import Patient, Specimen

__all__ = ["PatientForm", "SpecimenForm"]


class DateInput(forms.DateInput):
    input_type = "date"


class DateTimeInput(forms.DateTimeInput):
    input_type = "datetime-local"


class PatientForm(forms.ModelForm):
    class Meta:
        model = Patient
        fields = ["mrn", "name", "date_of_birth", "sex"]
        widgets = {"date_of_birth": DateInput()}


class SpecimenForm(forms.ModelForm):
    class Meta:
        model = Specimen
        fields = ["accession", "kind", "stain", "collected_at", "collected_by", "notes"]
        widgets = {"collected_at": DateTimeInput(format="%Y-%m-%dT%H:%M"), "notes": forms.Textarea(attrs={"rows": 3})}
