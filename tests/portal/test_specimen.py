"""Blasts in the portal and the specimen's one conclusion, on the real database through the worker's code path.

Cells whose label is ``blast`` come from ``store_cell_outcome`` fed with answers in the wbc_cells
contract (as tests/portal/test_cells.py does); the frame models' answers from ``helpers.complete``. Checked:
the blast row (count, % with its 95% interval), the 20% line, the target count, blasts drawn apart,
reclassification to and from blast, a cell added by hand (page and API, every refusal), the summary page
and API with the agreement checks, the specimen's sign-off (immutable, audited, no more images), and
every export carrying the conclusion: summary CSV, analyses CSV's consensus, FHIR, PDF.
"""

from __future__ import annotations

import csv
import re
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client

from portal.actions.cells import add_cell
from portal.actions.outcomes import store_cell_outcome
from portal.actions.signoff import sign_off
from portal.actions.specimen import sign_off_specimen
from portal.actions.uploads import upload_images
from portal.analyses.conclusion import ALL_WITHOUT_BLASTS, BLASTS_IN_BENIGN
from portal.analyses.models import Cell, Image, ImmutableError, SpecimenReview
from portal.analyses.reports import SUMMARY_CSV_COLUMNS
from portal.audit.models import AuditEvent
from tests.portal.conftest import login, smear_paths, validated
from tests.portal.helpers import complete, uncompressed_pdf
from tests.portal.test_cells import _cell, _token_client, answer

pytestmark = pytest.mark.django_db

MODEL = ["mobilenetv3_lstm"]
#: frame A, called Pre-B ALL: 3 blasts, 2 lymphocytes, 1 neutrophil
FRAME_A = [
    _cell([10, 10, 60, 60], "blast", "blast", 0.93),
    _cell([80, 10, 130, 60], "blast", "blast", 0.91),
    _cell([150, 10, 200, 60], "blast", "blast", 0.88),
    _cell([10, 100, 60, 150], "lymphocyte", "lymphocyte", 0.9),
    _cell([80, 100, 130, 150], "lymphocyte", "lymphocyte", 0.9),
    _cell([150, 100, 200, 150], "neutrophil", "neutrophil", 0.95),
]
#: frame B, called Benign by its model: 1 blast, 3 lymphocytes (under the line that refers: a note)
FRAME_B = [
    _cell([10, 10, 60, 60], "blast", "blast", 0.8),
    _cell([80, 10, 130, 60], "lymphocyte", "lymphocyte", 0.9),
    _cell([150, 10, 200, 60], "lymphocyte", "lymphocyte", 0.9),
    _cell([10, 100, 60, 150], "lymphocyte", "lymphocyte", 0.9),
]


@pytest.fixture(autouse=True)
def _cells_on(settings: Any) -> None:
    settings.PORTAL_CELL_MODEL = "wbc_cells"


def _frames(
    technologist: Any, specimen: Any, cells: list[list[Any]], labels: list[str], models: list[str] = MODEL
) -> list[Image]:
    """One frame per cell list, its cells stored and its frame models answering its label."""
    images = upload_images(technologist, specimen, validated(smear_paths(len(cells))), models)
    for image, frame_cells, label in zip(images, cells, labels, strict=True):
        assert store_cell_outcome(image.cell_analysis.pk, answer(frame_cells)) == "done"
        for a in image.analyses.all():
            complete(a, label)
    return sorted(images, key=lambda i: i.pk)


@pytest.fixture
def frames(technologist: Any, specimen: Any) -> list[Image]:
    return _frames(technologist, specimen, [FRAME_A, FRAME_B], ["Pre", "Benign"])


# --- the differential with blasts ---------------------------------------------------------------------


def test_blast_row_line_interval_and_target_on_every_view(
    tech_client: Client, technologist: Any, frames: list[Image], specimen: Any, settings: Any
) -> None:
    """4 blasts of 10 white cells: 40.0%, 95% CI 16.8-68.7, over the 20% line; 10 of 100 counted."""
    page = tech_client.get(f"/specimens/{specimen.pk}/differential/").content.decode()
    row = page.split('<tr data-type="blast"')[1].split("</tr>")[0]
    assert 'class="blast over-line"' in row and '<td class="num count">4</td>' in row
    assert '<td class="num percent">40.0</td>' in row and '<td class="num interval">16.8-68.7</td>' in row
    assert 'data-over-line="true"' in page and "Blasts at or over 20%" in page
    assert "Blasts 4 of 10 white cells: 40.0% (95% CI 16.8-68.7%), at or over the 20% line" in page
    assert "the 95% interval still crosses the line" in page  # 16.8 < 20 <= 68.7: ten cells cannot tell
    assert 'data-counted="10" data-target="100"' in page and "10 of 100 white cells counted: 90 more" in page
    # blasts drawn apart: their gallery group and every blast crop, and on the frame's overlay
    assert 'class="gallery-group blast" id="type-blast"' in page and page.count('class=" blast"') == 4
    frame_page = tech_client.get(f"/images/{frames[0].pk}/").content.decode()
    assert frame_page.count('<g class="cell blast"') == 3 and frame_page.count('class="blast"') == 3  # rows too
    api = _token_client(technologist).get(f"/api/specimens/{specimen.pk}/differential/").json()
    assert (api["blast_percent"], api["blast_interval_95"], api["blasts_over_threshold"]) == (40.0, [16.8, 68.7], True)
    assert (api["counts"]["blast"], api["target_count"], api["target_reached"]) == (4, 100, False)
    assert api["interval_95_of_white_cells"]["lymphocyte"] == [23.7, 76.3]  # 5 of 10
    settings.PORTAL_DIFFERENTIAL_TARGET = 200  # the lab's choice
    assert (
        "10 of 200 white cells counted: 190 more"
        in tech_client.get(f"/specimens/{specimen.pk}/differential/").content.decode()
    )


def test_the_interval_crossing_the_line_is_said(tech_client: Client, technologist: Any, specimen: Any) -> None:
    """1 blast in 4 white cells: 25%, 95% CI 4.6-69.9 contains 20%: the page says count more."""
    _frames(technologist, specimen, [FRAME_B], ["Pre"])
    page = tech_client.get(f"/specimens/{specimen.pk}/differential/").content.decode()
    assert "the 95% interval still crosses the line" in page and "Count more cells" in page


def test_reclassify_to_and_from_blast(
    tech_client: Client, technologist: Any, frames: list[Image], specimen: Any
) -> None:
    lymphocyte = Cell.objects.get(image=frames[0], index=3)
    assert tech_client.post(f"/cells/{lymphocyte.pk}/reclassify/", {"label": "blast"}).status_code == 302
    lymphocyte.refresh_from_db()
    assert lymphocyte.final_label == "blast" and lymphocyte.label == "lymphocyte"
    api = _token_client(technologist)
    assert api.get(f"/api/specimens/{specimen.pk}/differential/").json()["counts"]["blast"] == 5
    blast = Cell.objects.get(image=frames[0], index=0)
    answer_ = api.post(f"/api/cells/{blast.pk}/reclassify/", {"label": "lymphocyte"}, content_type="application/json")
    assert answer_.status_code == 200 and answer_.json()["final_label"] == "lymphocyte"
    assert api.get(f"/api/specimens/{specimen.pk}/differential/").json()["counts"]["blast"] == 4
    trail = [(e.data["old"], e.data["new"]) for e in AuditEvent.objects.filter(action="cell.reclassify").order_by("id")]
    assert trail == [("lymphocyte", "blast"), ("blast", "lymphocyte")]


# --- a cell the model missed ----------------------------------------------------------------------------


def test_add_a_missed_cell_on_the_page_counts_it_and_audits(
    tech_client: Client, frames: list[Image], specimen: Any
) -> None:
    image = frames[0]
    page = tech_client.get(f"/images/{image.pk}/").content.decode()
    assert 'id="add-cell"' in page and "portal/add_cell.js" in page and '<option value="artefact"' in page
    assert '<option value="artefact">' not in page.split('id="add-cell"')[1]  # a cell, never an artefact
    response = tech_client.post(
        f"/images/{image.pk}/cells/add/", {"x0": 10, "y0": 170, "x1": 70, "y1": 220, "label": "blast"}
    )
    cell = Cell.objects.get(image=image, manual=True)
    assert response.status_code == 302 and response["Location"].endswith(f"#cell-{cell.pk}")
    assert (cell.final_label, cell.label, cell.score, cell.index, cell.box) == (
        "blast",
        "",
        None,
        6,
        [10, 170, 70, 220],
    )
    assert cell.reviewed_by is not None and cell.reviewed_by.username == "tech"
    event = AuditEvent.objects.get(action="cell.add")
    assert event.data == {"image_id": image.pk, "box": [10, 170, 70, 220], "label": "blast"}
    diff = tech_client.get(f"/specimens/{specimen.pk}/differential/").content.decode()
    assert '<tr data-type="blast" class="blast over-line"><td>Blast</td><td class="num count">5</td>' in diff
    assert "1 added by hand" in diff and "added by hand by tech" in diff
    assert tech_client.get(f"/cells/{cell.pk}/crop.png")["Content-Type"] == "image/png"
    assert "added by hand by tech" in tech_client.get(f"/images/{image.pk}/").content.decode()


@pytest.mark.parametrize(
    ("box", "reason"),
    [
        ([10, 10, 60, 60], "lies over cell"),  # the first blast, already counted
        ([600, 10, 800, 60], "is not inside"),
        ([210, 210, 212, 212], "smaller than 4 pixels"),
        ([60, 60, 10, 10], "is not inside"),
    ],
)
def test_adding_a_cell_is_refused_with_a_reason(
    technologist: Any, frames: list[Image], box: list[int], reason: str
) -> None:
    with pytest.raises(ValidationError, match=reason):
        add_cell(technologist, frames[0], box, "blast")
    assert AuditEvent.objects.get(action="cell.add_refused").data["box"] == str(box)
    assert not Cell.objects.filter(manual=True).exists()


def test_adding_a_cell_through_the_api_and_its_locks(
    technologist: Any, reviewer: Any, norole: Any, frames: list[Image], specimen: Any
) -> None:
    api = _token_client(technologist)
    body = {"image": frames[1].pk, "box": [150, 160, 210, 220], "label": "monocyte"}
    created = api.post("/api/cells/", body, content_type="application/json")
    assert created.status_code == 201, created.content
    assert (created.json()["manual"], created.json()["final_label"], created.json()["score"]) == (
        True,
        "monocyte",
        None,
    )
    assert api.post("/api/cells/", {**body, "label": "artefact"}, content_type="application/json").status_code == 400
    overlap = api.post("/api/cells/", body, content_type="application/json")
    assert overlap.status_code == 400 and "already counted" in overlap.json()["detail"][0]
    assert _token_client(norole).post("/api/cells/", body, content_type="application/json").status_code == 403
    # before the frame's cell analysis has finished
    (waiting,) = upload_images(technologist, specimen, validated(smear_paths(1)), MODEL)
    early = api.post("/api/cells/", {**body, "image": waiting.pk}, content_type="application/json")
    assert early.status_code == 400 and "has not finished" in early.json()["detail"][0]
    # once the frame is signed off
    sign_off(reviewer, frames[1], decision="agree")
    locked = api.post("/api/cells/", {**body, "box": [20, 160, 80, 220]}, content_type="application/json")
    assert locked.status_code == 409
    with pytest.raises(PermissionDenied):
        add_cell(norole, frames[0], [20, 160, 80, 220], "blast")


# --- the specimen summary, its checks and its sign-off ------------------------------------------------


def test_summary_page_and_api_refer_and_note_a_blast_under_the_line(
    rev_client: Client, technologist: Any, frames: list[Image], specimen: Any
) -> None:
    page = rev_client.get(f"/specimens/{specimen.pk}/summary/").content.decode()
    assert 'data-refer="true"' in page and "Refer: no specimen conclusion" in page
    # frame B, called Benign, has 1 blast among its 4 white cells: under the line that refers, a note
    assert 'data-check="' not in page and 'id="notes"' in page
    assert "is called Benign (hematogones) and 1 blast was found among its 4 white cells, under the line" in page
    assert "The frames disagree" in page and "Blasts at or over 20%" in page and "disclaimer banner" in page
    assert 'id="specimen-sign-off"' not in page and 'id="not-ready"' in page  # frames not signed yet
    assert AuditEvent.objects.filter(action="specimen.summary", actor_username="rev").exists()
    api = _token_client(technologist).get(f"/api/specimens/{specimen.pk}/summary/").json()
    assert api["label"] is None and api["refer"] and api["checks"] == []
    assert any("1 blast was found among its 4 white cells" in n for n in api["notes"])
    assert [f["label"] for f in api["frames"]] == ["Pre", "Benign"] and api["signed_off"] is None
    assert api["differential"]["blast_percent"] == 40.0 and api["referred_frames"] == []
    assert api["notice"].startswith("Decision support only")
    assert "specimen-summary-button" in rev_client.get(specimen.get_absolute_url()).content.decode()


def test_blasts_at_the_line_in_a_frame_called_benign_refer(
    tech_client: Client, technologist: Any, specimen: Any
) -> None:
    """Frame A's 3 blasts of 6 white cells, the frame called Benign: the agreement check refers, on the page too."""
    (frame,) = _frames(technologist, specimen, [FRAME_A], ["Benign"])
    api = _token_client(technologist).get(f"/api/specimens/{specimen.pk}/summary/").json()
    assert api["refer"] and [(c["code"], c["image_id"]) for c in api["checks"]] == [(BLASTS_IN_BENIGN, frame.pk)]
    page = tech_client.get(f"/specimens/{specimen.pk}/summary/").content.decode()
    assert f'data-check="{BLASTS_IN_BENIGN}" data-image="{frame.pk}"' in page
    assert "is called Benign (hematogones) but 3 blasts were found among its 6 white cells" in page


def test_a_frame_called_all_without_blasts_refers(tech_client: Client, technologist: Any, specimen: Any) -> None:
    no_blasts = [c for c in FRAME_A if c["label"] != "blast"]
    (frame,) = _frames(technologist, specimen, [no_blasts], ["Pro"])
    api = _token_client(technologist).get(f"/api/specimens/{specimen.pk}/summary/").json()
    assert [(c["code"], c["image_id"]) for c in api["checks"]] == [(ALL_WITHOUT_BLASTS, frame.pk)]
    assert "no blast among its 3 white cells" in api["text"]


def test_specimen_sign_off_once_with_a_comment_then_immutable(
    rev_client: Client, tech_client: Client, technologist: Any, reviewer: Any, frames: list[Image], specimen: Any
) -> None:
    comment = "Pre-B ALL: 40% blasts in blood; frame B reclassified. Marrow and flow cytometry advised."
    # every frame must be signed first
    with pytest.raises(ValidationError, match="sign off every frame first"):
        sign_off_specimen(reviewer, specimen, decision="agree", comment=comment)
    refused = AuditEvent.objects.get(action="specimen.sign_off_refused")
    assert "not signed yet" in refused.data["reason"] and refused.actor_username == "rev"
    sign_off(reviewer, frames[0], decision="agree")
    sign_off(reviewer, frames[1], decision="reclassify", final_label="Pre", comment="blasts seen")
    page = rev_client.get(f"/specimens/{specimen.pk}/summary/").content.decode()
    assert 'id="specimen-sign-off"' in page and 'data-label="Pre"' in page and "checks-ok" in page
    # a technologist may not; a reviewer must give the comment
    assert (
        tech_client.post(f"/specimens/{specimen.pk}/sign-off/", {"decision": "agree", "comment": "x"}).status_code
        == 403
    )
    empty = rev_client.post(f"/specimens/{specimen.pk}/sign-off/", {"decision": "agree", "comment": " "}, follow=True)
    assert "Not signed" in empty.content.decode() and not SpecimenReview.objects.exists()
    # a refused form comes back as the reviewer left it (choice, class, comment), never a fresh one
    kept = rev_client.post(
        f"/specimens/{specimen.pk}/sign-off/", {"decision": "reclassify", "final_label": "Pro", "comment": " "}
    )
    html = kept.content.decode()
    assert kept.status_code == 400 and "Not signed" in html and not SpecimenReview.objects.exists()
    assert re.search(r'value="reclassify"[^>]*checked', html) and re.search(r'value="Pro"[^>]*selected', html)
    response = rev_client.post(
        f"/specimens/{specimen.pk}/sign-off/", {"decision": "agree", "comment": comment}, follow=True
    )
    html = response.content.decode()
    assert "signed off as Pre-B ALL" in html and 'id="specimen-review"' in html and comment in html
    review = SpecimenReview.objects.get(specimen=specimen)
    assert (review.final_label, review.conclusion_label, review.blast_percent, review.reviewer_name) == (
        "Pre",
        "Pre",
        40.0,
        "rev",
    )
    assert review.evidence["label"] == "Pre" and review.evidence["differential"]["counts"]["blast"] == 4
    event = AuditEvent.objects.get(action="specimen.sign_off")
    assert (event.data["final_label"], event.data["comment"], event.data["blast_percent"]) == ("Pre", comment, 40.0)
    assert event.data["frames"] == {str(frames[0].pk): "Pre", str(frames[1].pk): "Pre"}
    # immutable: a second sign-off, any change, any deletion
    with pytest.raises(ImmutableError):
        sign_off_specimen(reviewer, specimen, decision="reclassify", final_label="Pro", comment="x")
    review.comment = "changed"
    with pytest.raises(ImmutableError):
        review.save()
    with pytest.raises(ImmutableError):
        review.delete()
    # no more images: the action, the upload form and the API refuse them
    with pytest.raises(ValidationError, match="signed off"):
        upload_images(technologist, specimen, validated(smear_paths(1)), MODEL)
    assert f'value="{specimen.pk}"' not in tech_client.get("/upload/").content.decode()
    assert "takes no more images" in tech_client.get(specimen.get_absolute_url()).content.decode()
    api = _token_client(technologist)
    with smear_paths(1)[0].open("rb") as fh:
        upload = api.post("/api/analyses/", {"specimen": specimen.pk, "model": MODEL[0], "images": [fh]})
    assert upload.status_code == 400 and "signed off" in upload.content.decode()
    assert Image.objects.filter(specimen=specimen).count() == 2


def test_reviewer_sets_the_class_of_a_referred_specimen_through_the_api(
    reviewer: Any, technologist: Any, frames: list[Image], specimen: Any
) -> None:
    for image in frames:
        sign_off(reviewer, image, decision="agree")  # Pre and Benign: the frames disagree
    api = _token_client(reviewer)
    url = f"/api/specimens/{specimen.pk}/sign-off/"
    agree = api.post(url, {"decision": "agree", "comment": "ok"}, content_type="application/json")
    assert agree.status_code == 400 and "set its class yourself" in agree.json()["detail"][0]
    no_comment = api.post(url, {"decision": "reclassify", "final_label": "Pre"}, content_type="application/json")
    assert no_comment.status_code == 400 and "comment" in no_comment.json()
    assert _token_client(technologist).post(url, {"decision": "agree", "comment": "x"}).status_code == 403
    body = {"decision": "reclassify", "final_label": "Pre", "comment": "Blasts in both frames: Pre-B ALL."}
    signed = api.post(url, body, content_type="application/json")
    assert signed.status_code == 201, signed.content
    assert (signed.json()["final_label"], signed.json()["conclusion_label"]) == ("Pre", "")
    assert api.post(url, body, content_type="application/json").status_code == 409
    summary = api.get(f"/api/specimens/{specimen.pk}/summary/").json()
    assert summary["signed_off"]["final_label"] == "Pre" and summary["signed_off"]["comment"] == body["comment"]


def test_the_schema_declares_every_answer_of_the_new_endpoints(tech_client: Client) -> None:
    import yaml

    schema = yaml.safe_load(tech_client.get("/api/schema/").content)
    paths = schema["paths"]
    # their own answers; the contract (portal.api.schema) adds the common ones (415, 503, ...) to every operation
    assert {"201", "400", "401", "403", "404", "409"} <= set(
        paths["/api/specimens/{id}/sign-off/"]["post"]["responses"]
    )
    assert {"200", "401", "403", "404"} <= set(paths["/api/specimens/{id}/summary/"]["get"]["responses"])
    assert {"201", "400", "401", "403", "409"} <= set(paths["/api/cells/"]["post"]["responses"])


# --- exports ---------------------------------------------------------------------------------------------


def test_exports_carry_the_conclusion(
    rev_client: Client, reviewer: Any, frames: list[Image], specimen: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = list(csv.DictReader(rev_client.get(f"/specimens/{specimen.pk}/summary.csv").content.decode().splitlines()))
    assert len(rows) == 1 and list(rows[0]) == SUMMARY_CSV_COLUMNS
    row = rows[0]
    assert (row["conclusion_label"], row["refer"], row["checks"], row["signed_off"]) == (
        "",
        "True",
        "",
        "False",
    )
    assert (row["blasts"], row["blast_percent"], row["blast_ci95_low"], row["blast_ci95_high"]) == (
        "4",
        "40.0",
        "16.8",
        "68.7",
    )
    assert (row["white_cells"], row["target_count"], row["blasts_over_threshold"]) == ("10", "100", "True")
    assert row["notice"].startswith("Decision support only")
    assert AuditEvent.objects.filter(action="export.summary_csv").exists()
    # the analyses CSV: each model's answer beside its image's consensus
    export = rev_client.get("/exports/", {"start": "2000-01-01", "end": "2100-01-01"}).content.decode()
    by_image = {r["image_id"]: r for r in csv.DictReader(export.splitlines())}
    assert (
        by_image[str(frames[0].pk)]["image_consensus"] == "Pre"
        and by_image[str(frames[0].pk)]["consensus_agreement"] == "1 of 1"
    )
    # the PDF opens with the conclusion, before the differential and the frames
    pdf = uncompressed_pdf(specimen, monkeypatch)
    at = [pdf.index(b"(Specimen conclusion)"), pdf.index(b"(White-cell differential)"), pdf.rindex(b"(Frames)")]
    assert at == sorted(at) and b"(Refer: no specimen conclusion)" in pdf and b"(95% interval)" in pdf
    # once signed: the summary CSV and FHIR carry the sign-off
    for image in frames:
        sign_off(reviewer, image, decision="reclassify", final_label="Pre", comment="blasts")
    sign_off_specimen(reviewer, specimen, decision="agree", comment="Pre-B ALL, 40% blasts.")
    row = next(csv.DictReader(rev_client.get(f"/specimens/{specimen.pk}/summary.csv").content.decode().splitlines()))
    assert (row["signed_off"], row["final_label"], row["reviewer"], row["comment"]) == (
        "True",
        "Pre",
        "rev",
        "Pre-B ALL, 40% blasts.",
    )
    bundle = rev_client.get(f"/specimens/{specimen.pk}/fhir.json").json()
    report = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    assert report["status"] == "final" and "Interpretation: Pre-B ALL, 40% blasts." in report["conclusion"]
    blast = next(e["resource"] for e in bundle["entry"] if e["resource"]["id"] == f"differential-{specimen.pk}-blast")
    assert blast["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "26446-5",
        "display": "Blasts/100 leukocytes in Blood",
    }
    assert blast["valueQuantity"] == {"value": 40.0, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    assert "at or over the 20% line" in blast["note"][0]["text"]
    assert login(reviewer).get(f"/specimens/{specimen.pk}/report.pdf").status_code == 200
