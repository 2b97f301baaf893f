"""FHIR export: every bundle validates against the fhir.resources R4B models and says what a lab needs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from portal.actions.signoff import sign_off
from portal.actions.specimen import sign_off_specimen
from portal.actions.uploads import upload_images
from portal.analyses.validation import validate_image_bytes
from portal.audit.models import AuditEvent
from tests.portal.conftest import smear_paths
from tests.portal.helpers import complete

pytestmark = pytest.mark.django_db


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _upload(technologist: Any, specimen: Any, settings: Any) -> list[Any]:
    path = smear_paths(1)[0]
    (image,) = upload_images(
        technologist, specimen, [validate_image_bytes(path.name, path.read_bytes())], list(settings.PORTAL_MODELS)
    )
    return list(image.analyses.order_by("model_name"))


def test_preliminary_then_final_after_sign_off(
    technologist: Any, reviewer: Any, specimen: Any, rev_client: Client, settings: Any
) -> None:
    analyses = _upload(technologist, specimen, settings)
    complete(analyses[0], "Pre")
    complete(analyses[1], "Pre")
    complete(analyses[2], "Early", abstained=True)
    complete(analyses[3], "Pre")
    response = rev_client.get(f"/api/specimens/{specimen.pk}/fhir/")
    assert response.status_code == 200
    bundle = response.json()
    Bundle.model_validate(bundle)  # the library's own models accept it
    (report,) = _resources(bundle, "DiagnosticReport")
    DiagnosticReport.model_validate(report)
    assert report["status"] == "preliminary" and "Decision support only" in report["conclusion"]
    assert "Pre (3 of 4 models), not signed off" in report["conclusion"]
    (patient,) = _resources(bundle, "Patient")
    assert patient["identifier"][0]["value"] == specimen.patient.mrn and patient["gender"] == "female"
    observations = _resources(bundle, "Observation")
    assert len(observations) == 5 and {o["status"] for o in observations} == {"preliminary"}
    image_result = next(o for o in observations if o["id"].startswith("image-"))  # the image's result, then evidence
    Observation.model_validate(image_result)
    assert image_result["valueCodeableConcept"]["coding"][0]["code"] == "Pre" and "performer" not in image_result
    assert {d["reference"] for d in image_result["derivedFrom"]} == {f"Observation/analysis-{a.pk}" for a in analyses}
    for obs in (o for o in observations if o["id"].startswith("analysis-")):
        Observation.model_validate(obs)
        assert len(obs["component"]) == 5  # four class probabilities + P(malignant)
        assert obs["device"]["reference"].startswith("Device/device-")
    abstained = next(o for o in observations if o["id"] == f"analysis-{analyses[2].pk}")
    assert abstained["valueCodeableConcept"]["coding"][0]["code"] == "refer"
    assert {d["deviceName"][0]["name"] for d in _resources(bundle, "Device")} == set(settings.PORTAL_MODELS)

    sign_off(reviewer, analyses[0].image, decision="reclassify", final_label="Pro", comment="checked at the microscope")
    download = rev_client.get(f"/specimens/{specimen.pk}/fhir.json")
    assert download.status_code == 200 and "attachment" in download["Content-Disposition"]
    final = json.loads(download.content)
    Bundle.model_validate(final)
    (report,) = _resources(final, "DiagnosticReport")
    # the frame is signed, the specimen not yet: the report stays preliminary, its conclusion says why
    assert report["status"] == "preliminary" and "Specimen conclusion (not signed off)" in report["conclusion"]
    assert "has no cell analysis to show a blast" in report["conclusion"]  # an agreement check refers it
    sign_off_specimen(
        reviewer, specimen, decision="reclassify", final_label="Pro", comment="Pro-B ALL; flow cytometry advised."
    )
    final = rev_client.get(f"/specimens/{specimen.pk}/fhir.json").json()
    Bundle.model_validate(final)
    (report,) = _resources(final, "DiagnosticReport")
    assert report["status"] == "final" and report["resultsInterpreter"] == [
        {"reference": "Practitioner/practitioner-rev"}
    ]
    assert "Specimen signed off by rev" in report["conclusion"] and "Pro-B ALL (set the class)" in report["conclusion"]
    assert "Interpretation: Pro-B ALL; flow cytometry advised." in report["conclusion"]
    assert {o["status"] for o in _resources(final, "Observation")} == {"final"}
    codes = {o["id"]: o["valueCodeableConcept"]["coding"][0]["code"] for o in _resources(final, "Observation")}
    image_result = next(o for o in _resources(final, "Observation") if o["id"].startswith("image-"))
    assert codes[image_result["id"]] == "Pro" and image_result["performer"] == [
        {"reference": "Practitioner/practitioner-rev"}
    ]
    # the models' observations stay what each model said (the evidence the reviewer overruled)
    assert codes[f"analysis-{analyses[0].pk}"] == "Pre" and codes[f"analysis-{analyses[2].pk}"] == "refer"
    assert "Pro, signed off by rev" in report["conclusion"]
    assert AuditEvent.objects.filter(action="export.fhir").count() == 3


def test_fhir_export_needs_the_export_permission(tech_client: Client, specimen: Any) -> None:
    assert tech_client.get(f"/api/specimens/{specimen.pk}/fhir/").status_code == 403
    assert tech_client.get(f"/specimens/{specimen.pk}/fhir.json").status_code == 403


def test_an_empty_specimen_exports_a_valid_preliminary_bundle(rev_client: Client, specimen: Any) -> None:
    bundle = rev_client.get(f"/api/specimens/{specimen.pk}/fhir/").json()
    Bundle.model_validate(bundle)
    (report,) = _resources(bundle, "DiagnosticReport")
    assert report["status"] == "preliminary" and "result" not in report
