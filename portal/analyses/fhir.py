"""FHIR export of a specimen's results: one ``Bundle`` another clinical system can read.

Built and validated with the ``fhir.resources`` models of **FHIR R4B (4.3.0)**, whose Patient,
Specimen, Device, Practitioner, Observation, DiagnosticReport and Bundle are the R4 (4.0.1)
resources with compatible content. The bundle (type ``collection``) holds:

- ``Patient``: the MRN as identifier (system ``PORTAL_FHIR_MRN_SYSTEM``), name, sex, birth date;
- ``Specimen``: the accession as identifier, kind, collection time;
- one ``Device`` per model and version (the software that pre-classified);
- one ``Practitioner`` per reviewer who signed;
- one ``Observation`` per image: the image's result, ``valueCodeableConcept`` the reviewer's final class
  once the image is signed off (status ``final``, the reviewer as ``performer``), else the consensus of
  the models or "refer for manual review" (``preliminary``); ``derivedFrom`` its models' Observations;
- one ``Observation`` per model result on each image (the evidence): ``valueCodeableConcept`` is the
  model's class ("refer for manual review" when it abstained), ``component`` holds every class
  probability and P(malignant), ``device`` names model and version, status ``final`` once the image is
  signed off, else ``preliminary``;
- the white-cell differential (portal.analyses.differential), ``device`` the cell model, ``final`` once
  every frame with cells is signed off, else ``preliminary``: one ``Observation`` with the white cells
  counted (LOINC 11282-1; a note gives the artefacts excluded and the cells added by hand); one per
  white-cell type with at least one cell, and always one for the blasts once a white cell was counted:
  ``valueQuantity`` the percentage of the white cells (UCUM ``%``), coded with LOINC's "<type>/100
  leukocytes in Blood" where a term exists (portal.analyses.terminology says which, and where each code
  was verified), ``component`` the count and the 95% interval's limits; the blasts' note says where they
  stand against the acute-leukaemia line; the nucleated red cells (count, a ``component`` per 100 white
  cells, UCUM ``/100{WBCs}``) and the platelets (count only, never a percentage), text only, each when any
  was counted;
- the ``DiagnosticReport``: status ``final`` once the specimen is signed off (portal.analyses.models.
  SpecimenReview), else ``preliminary``; subject, specimen, results, the reviewers as
  ``resultsInterpreter``, and as ``conclusion`` the specimen's one conclusion (the reviewer's class and
  interpretive comment once signed; portal.analyses.conclusion's otherwise, with every reason to refer),
  then each image's result (final class, else consensus) and the decision-support notice. Codes are text
  where no standard code was verified (the report's own code, ``conclusionCode``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils import timezone
from fhir.resources.R4B.bundle import Bundle

from core.prediction import NOTICE
from portal.analyses.cell_review import frame_reviews, specimen_cells
from portal.analyses.conclusion import SpecimenConclusion, class_description
from portal.analyses.consensus import consensus
from portal.analyses.differential import BLAST, PLATELET, Differential, DifferentialRow, differential
from portal.analyses.models import Analysis, Image, ImageReview, QueuedJob, Review, SpecimenReview
from portal.analyses.specimen_summary import signed_review, specimen_conclusion
from portal.analyses.terminology import CELLS_COUNTED, PERCENT_OF_LEUKOCYTES, loinc_coding
from portal.patients.models import Patient, Specimen

__all__ = ["CLASS_SYSTEM", "conclusion_text", "specimen_bundle"]

CLASS_SYSTEM = "urn:leukemia-portal:b-all-class"
_GENDER = {"F": "female", "M": "male", "O": "other", "U": "unknown"}
_REFER = {"system": CLASS_SYSTEM, "code": "refer", "display": "Refer for manual review (the model abstained)"}


def _ref(resource_type: str, rid: str) -> dict[str, str]:
    return {"reference": f"{resource_type}/{rid}"}


def _patient(p: Patient) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": f"patient-{p.pk}",
        "identifier": [{"system": settings.PORTAL_FHIR_MRN_SYSTEM, "value": p.mrn, "type": {"text": "MRN"}}],
        "name": [{"text": p.name}],
        "gender": _GENDER.get(p.sex, "unknown"),
        "birthDate": p.date_of_birth.isoformat(),
    }


def _specimen(s: Specimen) -> dict[str, Any]:
    return {
        "resourceType": "Specimen",
        "id": f"specimen-{s.pk}",
        "accessionIdentifier": {"system": settings.PORTAL_FHIR_ACCESSION_SYSTEM, "value": s.accession},
        "type": {"text": f"{s.get_kind_display()}, {s.stain}"},
        "subject": _ref("Patient", f"patient-{s.patient_id}"),
        "collection": {"collectedDateTime": s.collected_at.isoformat()},
    }


def _device_id(a: QueuedJob) -> str:
    return f"device-{a.model_name}-{a.model_version or 'unknown'}".replace("_", "-").replace(".", "-")


def _device(a: QueuedJob) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "id": _device_id(a),
        "deviceName": [{"name": a.model_name, "type": "model-name"}],
        "version": [{"value": a.model_version or "unknown"}],
        "note": [{"text": "Deep-learning pre-classification of peripheral blood smear images (decision support)."}],
    }


def _class(label: str) -> dict[str, Any]:
    return {"system": CLASS_SYSTEM, "code": label, "display": class_description(label)}


def _observation(a: Analysis, review: ImageReview | Review | None) -> dict[str, Any]:
    coding = _class(a.label) if a.label and not a.abstained else _REFER
    components = [
        {
            "code": {"text": f"P({cls})"},
            "valueQuantity": {
                "value": round(float(p), 6),
                "unit": "probability",
                "system": "http://unitsofmeasure.org",
                "code": "1",
            },
        }
        for cls, p in a.probability_rows()
    ]
    if a.malignant_probability is not None:
        components.append(
            {
                "code": {"text": "P(malignant: Early, Pre or Pro B-ALL)"},
                "valueQuantity": {
                    "value": round(a.malignant_probability, 6),
                    "unit": "probability",
                    "system": "http://unitsofmeasure.org",
                    "code": "1",
                },
            }
        )
    notes = [
        {
            "text": f"Model {a.model_name} {a.model_version}: {a.label or 'abstained (refer)'}, "
            f"confidence {a.confidence or 0.0:.3f}."
        }
    ]
    if review:
        notes.append({"text": f"Signed off by {review.reviewer_name}: final class {review.final_label}."})
    return {
        "resourceType": "Observation",
        "id": f"analysis-{a.pk}",
        "status": "final" if review else "preliminary",
        "code": {"text": "B-ALL subtype pre-classification of a peripheral blood smear image"},
        "subject": _ref("Patient", f"patient-{a.image.specimen.patient_id}"),
        "specimen": _ref("Specimen", f"specimen-{a.image.specimen_id}"),
        "device": _ref("Device", _device_id(a)),
        "effectiveDateTime": (a.completed_at or a.created_at).isoformat(),
        "valueCodeableConcept": {"coding": [coding], "text": coding["display"]},
        "component": components,
        "note": notes,
    }


_PERCENT = {"unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
#: UCUM for "per 100 white cells" (the unit LOINC gives nucleated red cells per 100 leukocytes)
_PER_100_WBC = {"unit": "/100 WBC", "system": "http://unitsofmeasure.org", "code": "/100{WBCs}"}


def _count(n: int) -> dict[str, Any]:
    return {"value": n, "unit": "cells", "system": "http://unitsofmeasure.org", "code": "{cells}"}


def _percent_observation(row: DifferentialRow, diff: Differential) -> tuple[str, dict[str, Any], list[Any], str]:
    """A white-cell type as LOINC reports it: the percentage of the white cells, coded where a term exists;
    the count and the 95% interval's limits as components."""
    code: dict[str, Any] = {"text": f"{row.description}/100 white cells (image-based differential)"}
    if row.category in PERCENT_OF_LEUKOCYTES:
        code["coding"] = [loinc_coding(PERCENT_OF_LEUKOCYTES[row.category])]
    components: list[dict[str, Any]] = [
        {
            "code": {"text": f"{row.description}, cells counted of {diff.white_cells} white cells"},
            "valueQuantity": _count(row.count),
        }
    ]
    if row.interval is not None:
        for name, value in zip(("lower", "upper"), row.interval, strict=True):
            components.append(
                {
                    "code": {"text": f"95% confidence interval, {name} limit (Wilson score interval)"},
                    "valueQuantity": {"value": round(value, 1), **_PERCENT},
                }
            )
    note = diff.blast_text if row.category == BLAST else ""
    return row.category, code, components, note


def _cell_observations(specimen: Specimen) -> tuple[list[dict[str, Any]], list[QueuedJob]]:
    """The differential as Observations (one computation: portal.analyses.differential), and the cell
    model(s) as devices: the white cells counted (artefacts excluded, in a note); one per white-cell type
    counted (always one for the blasts) with its percentage of the white cells, its count and 95% interval;
    the nucleated red cells with their number per 100 white cells; the platelets as a count only (no
    percentage: they are not white cells)."""
    cells = list(specimen_cells(specimen))
    if not cells:
        return [], []
    diff = differential(cells)
    frames = {c.image_id for c in cells}
    signed = frames <= set(frame_reviews(list(specimen.images.filter(pk__in=frames))))
    jobs: list[QueuedJob] = list({_device_id(c.cell_analysis): c.cell_analysis for c in cells}.values())

    def observation(key: str, code: dict[str, Any], value: dict[str, Any], components: list[Any]) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": f"differential-{specimen.pk}-{key}",
            "status": "final" if signed else "preliminary",
            "category": [{"text": "Laboratory: haematology, cell counts"}],
            "code": code,
            "subject": _ref("Patient", f"patient-{specimen.patient_id}"),
            "specimen": _ref("Specimen", f"specimen-{specimen.pk}"),
            "device": _ref("Device", _device_id(jobs[0])),
            "effectiveDateTime": specimen.collected_at.isoformat(),
            "valueQuantity": value,
            **({"component": components} if components else {}),
        }

    total = observation(
        "white-cells",
        {
            "coding": [loinc_coding(CELLS_COUNTED)],
            "text": "White cells counted (typed and unclassified) in the image-based differential",
        },
        _count(diff.white_cells),
        [],
    )
    total["note"] = [
        {
            "text": f"Excluded: {diff.excluded} detection(s) a technologist marked as artefacts (not cells). "
            f"Added by hand: {diff.added} cell(s) the cell model missed."
        }
    ]
    observations = [total]
    for row in diff.white_rows:
        if row.count or (row.category == BLAST and diff.white_cells):
            key, code, components, note = _percent_observation(row, diff)
            obs = observation(key, code, {"value": round(row.percent or 0.0, 1), **_PERCENT}, components)
            if note:
                obs["note"] = [{"text": note}]
            observations.append(obs)
    nrbc = diff.nrbc
    if nrbc.count:
        per_100 = []
        if nrbc.per_100_wbc is not None:
            per_100 = [
                {
                    "code": {"text": f"{nrbc.description} per 100 white cells (NRBC/100 WBC)"},
                    "valueQuantity": {"value": round(nrbc.per_100_wbc, 1), **_PER_100_WBC},
                }
            ]
        text = {"text": f"{nrbc.description}, count in the image-based white-cell differential"}
        observations.append(observation(nrbc.category, text, _count(nrbc.count), per_100))
    if diff.platelets.count:
        text = {"text": f"{diff.platelets.description}, count in the image-based white-cell differential"}
        observations.append(observation(PLATELET, text, _count(diff.platelets.count), []))
    return observations, jobs


def _image_observation(image: Image, analyses: list[Analysis], review: ImageReview | Review | None) -> dict[str, Any]:
    """The image's result: the reviewer's final class once signed, else the consensus (or refer)."""
    agreed = consensus(analyses)
    if review is not None:
        coding = _class(review.final_label)
    else:
        coding = _class(agreed.label) if agreed and agreed.label else _REFER
    said = f"{agreed.label} ({agreed.agreement} models)" if agreed and agreed.label else "no consensus (refer)"
    notes = [{"text": f"Consensus of the models: {said}."}]
    if review is not None:
        notes.append(
            {
                "text": f"Signed off by {review.reviewer_name} ({review.get_decision_display()})"
                + (f": {review.comment}" if review.comment else "")
            }
        )
    observation = {
        "resourceType": "Observation",
        "id": f"image-{image.pk}",
        "status": "final" if review is not None else "preliminary",
        "code": {"text": f"B-ALL subtype of a peripheral blood smear image ({image.original_name})"},
        "subject": _ref("Patient", f"patient-{image.specimen.patient_id}"),
        "specimen": _ref("Specimen", f"specimen-{image.specimen_id}"),
        "effectiveDateTime": (review.signed_at if review is not None else image.uploaded_at).isoformat(),
        "valueCodeableConcept": {"coding": [coding], "text": coding["display"]},
        "derivedFrom": [_ref("Observation", f"analysis-{a.pk}") for a in analyses],
        "note": notes,
    }
    if review is not None:
        observation["performer"] = [_ref("Practitioner", f"practitioner-{review.reviewer_name}")]
    return observation


def conclusion_text(conclusion: SpecimenConclusion, review: SpecimenReview | None) -> str:
    """The specimen's one conclusion in words: the reviewer's sign-off once signed, with the portal's
    conclusion it was signed against; else the portal's conclusion (label, frames, blasts, reasons)."""
    if review is None:
        return f"Specimen conclusion (not signed off): {conclusion.text}"
    agreed = "agreed with the portal's conclusion" if review.decision == "agree" else "set the class"
    return (
        f"Specimen signed off by {review.reviewer_name} at {timezone.localtime(review.signed_at):%Y-%m-%d %H:%M}: "
        f"{class_description(review.final_label)} ({agreed}). Interpretation: {review.comment} "
        f"Evidence: {review.evidence.get('text', '')}"
    )


def _image_review(image: Image, analyses: list[Analysis]) -> ImageReview | Review | None:
    """The image's sign-off, else (earlier versions) the first per-model sign-off when every result has one."""
    if image.signed_review is not None:
        return image.signed_review
    legacy = [a.signed_review for a in analyses]
    return legacy[0] if legacy and all(r is not None for r in legacy) else None


def specimen_bundle(specimen: Specimen) -> dict[str, Any]:
    """The specimen's FHIR Bundle as JSON-ready data, validated by the fhir.resources R4B models."""
    done = list(
        Analysis.objects.filter(image__specimen=specimen, status=Analysis.Status.DONE)
        .select_related("image__specimen", "image__review", "review")
        .order_by("image_id", "model_name")
    )
    images = {a.image_id: a.image for a in done}
    by_image = {pk: [a for a in done if a.image_id == pk] for pk in sorted(images)}
    reviews = {pk: _image_review(images[pk], by_image[pk]) for pk in by_image}
    resources: list[dict[str, Any]] = [_patient(specimen.patient), _specimen(specimen)]
    resources += list({_device_id(a): _device(a) for a in done}.values())
    specimen_review = signed_review(specimen)
    signers = {r.reviewer_name for r in reviews.values() if r is not None}
    reviewers = sorted(signers | ({specimen_review.reviewer_name} if specimen_review is not None else set()))
    resources += [
        {"resourceType": "Practitioner", "id": f"practitioner-{name}", "name": [{"text": name}]} for name in reviewers
    ]
    observations = [_image_observation(images[pk], by_image[pk], reviews[pk]) for pk in by_image]
    observations += [_observation(a, reviews[a.image_id]) for a in done]
    cell_observations, cell_jobs = _cell_observations(specimen)
    resources += [_device(job) for job in cell_jobs]
    observations += cell_observations
    resources += observations
    lines = []
    for pk in by_image:
        review, agreed = reviews[pk], consensus(by_image[pk])
        said = f"{agreed.label} ({agreed.agreement} models)" if agreed and agreed.label else "no consensus (refer)"
        verdict = f"{review.final_label}, signed off by {review.reviewer_name}" if review else f"{said}, not signed off"
        lines.append(f"{images[pk].original_name}: {verdict}")
    frames = f"Frames: {'; '.join(lines)}. " if lines else "No completed analyses. "
    report = {
        "resourceType": "DiagnosticReport",
        "id": f"report-specimen-{specimen.pk}",
        "status": "final" if specimen_review is not None else "preliminary",
        "code": {"text": "Peripheral blood smear image analysis, B-ALL subtype and differential (decision support)"},
        "subject": _ref("Patient", f"patient-{specimen.patient_id}"),
        "specimen": [_ref("Specimen", f"specimen-{specimen.pk}")],
        "effectiveDateTime": specimen.collected_at.isoformat(),
        "issued": timezone.now().isoformat(),
        "result": [_ref("Observation", o["id"]) for o in observations],
        "resultsInterpreter": [_ref("Practitioner", f"practitioner-{n}") for n in reviewers],
        "conclusion": conclusion_text(specimen_conclusion(specimen), specimen_review) + " " + frames + NOTICE,
    }
    resources.append(report)
    data = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": timezone.now().isoformat(),
        "entry": [{"fullUrl": f"urn:leukemia-portal:{r['resourceType']}/{r['id']}", "resource": r} for r in resources],
    }
    return dict(Bundle.model_validate(data).model_dump(mode="json", exclude_none=True))
