"""Patient data rules (portal/patients/validators.py), property-based, through every way data comes in."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from portal.patients.forms import PatientForm
from portal.patients.models import Patient
from portal.patients.validators import validate_date_of_birth, validate_mrn, validate_printable

CONTROL = st.characters(categories=["Cc", "Cf"])  # NUL, tab, newline, escape, bidi overrides, ...
PRINTABLE = (
    st.text(st.characters(categories=["L", "N", "P", "Zs"]), min_size=1, max_size=30).map(str.strip).filter(bool)
)
HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@HYPOTHESIS
@given(prefix=PRINTABLE, bad=CONTROL, suffix=PRINTABLE)
def test_text_with_a_control_character_is_refused(prefix: str, bad: str, suffix: str) -> None:
    with pytest.raises(ValidationError) as err:
        validate_printable(prefix + bad + suffix)
    assert err.value.code == "control_characters"


@HYPOTHESIS
@given(value=PRINTABLE)
def test_printable_text_is_accepted(value: str) -> None:
    validate_printable(value)
    validate_mrn(value)


@HYPOTHESIS
@given(days=st.integers(min_value=1, max_value=3_000_000))
def test_birth_dates_in_the_future_are_refused(days: int) -> None:
    with pytest.raises(ValidationError):
        validate_date_of_birth(timezone.localdate() + datetime.timedelta(days=min(days, 2_900_000)))


@HYPOTHESIS
@given(age_days=st.integers(min_value=0, max_value=365 * 129))
def test_plausible_birth_dates_are_accepted(age_days: int) -> None:
    validate_date_of_birth(timezone.localdate() - datetime.timedelta(days=age_days))


@pytest.mark.parametrize("dob", ["0020-09-12", "3951-09-26", "1890-01-01"])
def test_the_dates_found_by_fuzzing_are_refused(dob: str) -> None:
    with pytest.raises(ValidationError):
        validate_date_of_birth(datetime.date.fromisoformat(dob))


def test_configured_mrn_format(settings: Any) -> None:
    settings.PORTAL_MRN_PATTERN = r"MRN-\d{4}-\d{4}"
    validate_mrn("MRN-2026-0042")
    with pytest.raises(ValidationError) as err:
        validate_mrn("0042")
    assert err.value.code == "mrn_format"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value"),
    [("mrn", "MRN\x00001"), ("name", "Ada\u202eLovelace"), ("name", "Ada\nLovelace"), ("date_of_birth", "3951-09-26")],
)
def test_the_same_rules_in_the_form_and_the_api(technologist: Any, field: str, value: str) -> None:
    data = {"mrn": "MRN-1", "name": "Ada Lovelace", "date_of_birth": "1990-12-10", "sex": "F", field: value}
    form = PatientForm(data)
    assert not form.is_valid() and field in form.errors
    api = APIClient()
    api.force_authenticate(technologist)
    response = api.post("/api/patients/", data, format="json")
    assert response.status_code == 400 and field in response.json(), response.content
    assert Patient.objects.count() == 0


@pytest.mark.django_db
def test_admin_patient_form_applies_the_rules() -> None:
    from django.contrib import admin

    model_admin = admin.site._registry[Patient]
    form_class = model_admin.get_form(request=None, obj=None, fields=["mrn", "name", "date_of_birth", "sex"])
    form = form_class({"mrn": "M\tRN", "name": "Ada", "date_of_birth": "1990-01-01", "sex": "F"})
    assert not form.is_valid() and "mrn" in form.errors
