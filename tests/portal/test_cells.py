"""Cell-level analysis in the portal: one cell job per image, cells stored from the wbc_cells answer, the
annotated frame with its toggle, the specimen differential (arithmetic, gallery, reclassification audited
and counted), sign-off locking the frame's cells, exports and the API.

Cell rows come from ``store_cell_outcome`` fed with answers in the wbc_cells contract (test data,
the same code path a worker uses); the end-to-end test against the real TorchServe is in
tests/portal/test_cells_torchserve.py.
"""

from __future__ import annotations

import csv
import io
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client
from PIL import Image as PILImage

from core.prediction import NOTICE
from core.registry import CELL_CLASSES
from portal import jobs
from portal.actions.cells import reclassify_cell
from portal.actions.outcomes import store_cell_outcome
from portal.actions.signoff import sign_off
from portal.actions.uploads import upload_images
from portal.analyses import storage
from portal.analyses.differential import ARTEFACT, CATEGORIES, UNCLASSIFIED, differential
from portal.analyses.inference import CellPrediction, Refusal, ServerError
from portal.analyses.models import Cell, CellAnalysis, Image, ImmutableError
from portal.analyses.reports import CELLS_CSV_COLUMNS, DIFFERENTIAL_CSV_COLUMNS
from portal.audit.models import AuditEvent
from tests.portal.conftest import login, smear_paths, validated
from tests.portal.helpers import complete, png_bytes, uncompressed_pdf

pytestmark = pytest.mark.django_db

MODELS = ["xception_bigru", "effnetb3_bigru", "effnetb3_vit", "mobilenetv3_lstm"]


@pytest.fixture(autouse=True)
def _cells_on(settings: Any) -> None:
    settings.PORTAL_CELL_MODEL = "wbc_cells"


def _probs(top: str, p: float) -> dict[str, float]:
    rest = (1.0 - p) / (len(CELL_CLASSES) - 1)
    return {c: (p if c == top else rest) for c in CELL_CLASSES}


def _cell(box: list[int], label: str | None, top: str, p: float) -> dict[str, Any]:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    return {
        "box": box,
        "score": 0.97,
        "kind": "wbc",
        "label": label,
        "confidence": p,
        "probabilities": _probs(top, p),
        "abstained": label is None,
        "nucleus_polygon": [[cx - 5, cy - 5], [cx + 5, cy - 5], [cx + 5, cy + 5], [cx - 5, cy + 5]],
        "cell_polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]],
        "nucleus_area_px": 100,
        "cell_area_px": (x1 - x0) * (y1 - y0),
        "nc_ratio": 100 / ((x1 - x0) * (y1 - y0)),
    }


def answer(cells: list[dict[str, Any]], annotated: bool = True) -> CellPrediction:
    """An answer in the wbc_cells contract (annotated_png already decoded, as the client returns it)."""
    counts: dict[str, int] = {}
    for c in cells:
        if c["label"]:
            counts[c["label"]] = counts.get(c["label"], 0) + 1
    body = {
        "model": "wbc_cells",
        "version": "1.0",
        "cells": cells,
        "counts": counts,
        "abstain_threshold": 0.5,
        "quality": {"is_blood_smear": True},
        "notice": NOTICE,
        "timing_ms": {"total": 80.0},
    }
    return CellPrediction(body=body, latency_ms=95.0, annotated_png=png_bytes(224) if annotated else None)


FRAME_A = [
    _cell([10, 10, 60, 60], "neutrophil", "neutrophil", 0.95),
    _cell([100, 20, 150, 70], "lymphocyte", "lymphocyte", 0.9),
    _cell([30, 120, 90, 180], None, "monocyte", 0.4),  # abstained: unclassified
]
FRAME_B = [_cell([50, 50, 110, 110], "neutrophil", "neutrophil", 0.92)]


def _upload(technologist: Any, specimen: Any, n: int, models: list[str] | None = None) -> list[Image]:
    return upload_images(technologist, specimen, validated(smear_paths(n)), models or MODELS)


@pytest.fixture
def frames(technologist: Any, specimen: Any) -> list[Image]:
    """Two frames of one specimen, their cells stored (3 + 1), the four leukemia analyses done."""
    images = _upload(technologist, specimen, 2)
    for image, cells in zip(images, (FRAME_A, FRAME_B), strict=True):
        assert store_cell_outcome(image.cell_analysis.pk, answer(cells)) == "done"
        for a in image.analyses.all():
            complete(a, "Pre")
    return images


# --- the differential's arithmetic ----------------------------------------------------------------


def _typed(final: str, reviewed: str | None = None) -> Any:
    return SimpleNamespace(final_label=final, reviewed_label=reviewed)


def test_differential_counts_percentages_and_unclassified() -> None:
    """Only white cells here: the percentages of all of them add up to 100 (tests/portal/test_differential.py
    has the denominator without platelets, erythroblasts and artefacts)."""
    cells = [_typed("neutrophil")] * 6 + [_typed("lymphocyte", "lymphocyte")] * 3 + [_typed(UNCLASSIFIED)]
    diff = differential(cells)
    rows = {r.category: r for r in diff.rows}
    assert [r.category for r in diff.rows] == list(CATEGORIES) and CATEGORIES[-1] == ARTEFACT
    assert (diff.white_cells, diff.reviewed, diff.excluded) == (10, 3, 0)
    assert (rows["neutrophil"].count, rows["neutrophil"].percent) == (6, 60.0)
    assert (rows["lymphocyte"].count, rows["lymphocyte"].percent) == (3, 30.0)
    assert (rows[UNCLASSIFIED].count, rows[UNCLASSIFIED].percent) == (1, 10.0)
    assert rows["basophil"].count == 0 and sum(r.percent or 0 for r in diff.rows) == pytest.approx(100.0)
    assert diff.as_dict()["counts"]["neutrophil"] == 6
    empty = differential([])
    assert empty.white_cells == 0 and all(r.percent == 0.0 for r in empty.white_rows)
    with pytest.raises(ValueError, match="unknown cell labels"):
        differential([_typed("myeloblast")])  # not a type the registry knows


# --- jobs and storage -----------------------------------------------------------------------------


def test_one_cell_job_per_image_not_per_model(technologist: Any, specimen: Any, settings: Any) -> None:
    images = _upload(technologist, specimen, 2)
    jobs_ = CellAnalysis.objects.filter(image__in=images)
    assert jobs_.count() == 2 and {j.model_name for j in jobs_} == {"wbc_cells"}
    assert all(j.status == "pending" and j.stage == "queued" for j in jobs_)
    assert jobs.queued_cell_analysis_ids() == {j.pk for j in jobs_}
    assert len(jobs.queued_analysis_ids()) == 8  # the leukemia jobs are unchanged
    upload = AuditEvent.objects.get(action="image.upload")
    assert upload.data["cell_model"] == "wbc_cells"
    settings.PORTAL_CELL_MODEL = ""  # turned off: no cell job
    more = _upload(technologist, specimen, 1)
    assert not CellAnalysis.objects.filter(image__in=more).exists()


def test_unreachable_model_server_makes_the_cell_job_wait(technologist: Any, specimen: Any, settings: Any) -> None:
    settings.TORCHSERVE_URL = "http://127.0.0.1:9"  # nothing listens there
    image = _upload(technologist, specimen, 1, ["mobilenetv3_lstm"])[0]
    assert jobs.run_cell_analysis(image.cell_analysis.pk) == "pending"
    job = CellAnalysis.objects.get(image=image)
    assert (job.status, job.stage, job.error_code) == ("pending", "waiting", "unreachable")
    assert job.pk in jobs.queued_cell_analysis_ids()  # its retry is queued
    page = login(technologist).get(f"/images/{image.pk}/").content.decode()
    assert f'data-analysis-status="cells-{job.pk}"' in page and "portal/progress.js" in page
    progress = login(technologist).get(f"/images/{image.pk}/progress/").json()
    assert f"cells-{job.pk}" in {p["id"] for p in progress["analyses"]} and progress["final"] is False


def test_cells_stored_once_with_annotated_image_and_audit(frames: list[Image]) -> None:
    image = frames[0]
    job = CellAnalysis.objects.get(image=image)
    assert (job.status, job.model_version, job.latency_ms) == ("done", "1.0", 95.0)
    assert storage.read(job.annotated_name).startswith(b"\x89PNG")
    cells = list(image.cells.order_by("index"))
    assert [c.final_label for c in cells] == ["neutrophil", "lymphocyte", UNCLASSIFIED]
    assert cells[2].abstained and cells[2].label == "" and cells[2].top_class == "monocyte"
    assert cells[0].box == [10, 10, 60, 60] and cells[0].nucleus_area_px == 100 and cells[0].reviewed_label is None
    assert AuditEvent.objects.filter(action="cells.complete", object_id=str(job.pk)).get().data["cells"] == 3
    # a second delivery of the same job stores nothing
    assert store_cell_outcome(job.pk, answer(FRAME_B)) is None
    assert image.cells.count() == 3


def test_no_white_cell_is_done_with_no_cells_refusal_and_broken_answer(technologist: Any, specimen: Any) -> None:
    empty, refused, broken = _upload(technologist, specimen, 3, ["mobilenetv3_lstm"])
    assert store_cell_outcome(empty.cell_analysis.pk, answer([])) == "done"
    assert empty.cells.count() == 0
    refusal = Refusal("not_a_blood_smear", "no smear")
    assert store_cell_outcome(refused.cell_analysis.pk, refusal) == "rejected"
    bad = [dict(FRAME_B[0], label="myeloblast")]  # a type outside the registry breaks the contract
    assert store_cell_outcome(broken.cell_analysis.pk, answer(bad)) == "failed"
    job = CellAnalysis.objects.get(image=broken)
    assert "breaks the contract" in job.error_message and not job.annotated_name and broken.cells.count() == 0
    assert store_cell_outcome(CellAnalysis.objects.get(image=empty).pk, ServerError("late")) is None
    client = login(technologist)
    empty_page = client.get(f"/images/{empty.pk}/").content.decode()
    assert "No white cell found in this frame." in empty_page and "0 cells found" not in empty_page
    assert (
        "does not look like a stained peripheral blood smear" in client.get(f"/images/{refused.pk}/").content.decode()
    )


# --- pages ----------------------------------------------------------------------------------------


def test_results_page_overlays_cells_with_a_toggle_and_lists_them(tech_client: Client, frames: list[Image]) -> None:
    image = frames[0]
    page = tech_client.get(f"/images/{image.pk}/").content.decode()
    assert 'class="overlay-toggle"' in page and "checked" in page  # the toggle (no script needed)
    assert f'viewBox="0 0 {image.width} {image.height}"' in page
    assert page.count('<rect class="box"') == 3 and page.count('class="nucleus"') == 3
    assert page.count("data-cell-row=") == 3
    assert "1 neutrophil" in page and "3 unclassified" in page  # per-cell labels on the overlay
    # the summary line: each type found with its count, a full stop at the end (no dangling ", .")
    summary = page[page.index('id="cells-summary"') :].split("</p>")[0]
    assert "3 cells found: Lymphocyte 1, Neutrophil 1, Unclassified 1." in summary and ", ." not in summary
    assert f"/images/{image.pk}/annotated.png" in page and f"/specimens/{image.specimen_id}/differential/" in page
    annotated = tech_client.get(f"/images/{image.pk}/annotated.png")
    assert annotated.status_code == 200 and b"".join(annotated.streaming_content).startswith(b"\x89PNG")
    assert 'name="label"' in page  # a technologist may reclassify from here too


def test_differential_page_gallery_and_crop(tech_client: Client, frames: list[Image], specimen: Any) -> None:
    page = tech_client.get(f"/specimens/{specimen.pk}/differential/").content.decode()
    assert 'id="differential"' in page
    assert '<tr data-type="neutrophil"><td>Neutrophil</td><td class="num count">2</td><td class="num percent">50.0' in (
        page
    )
    assert '<tr data-type="unclassified"><td>Unclassified</td><td class="num count">1</td>' in page
    assert page.count("/crop.png") == 4 and 'id="type-neutrophil"' in page and 'id="type-unclassified"' in page
    assert AuditEvent.objects.filter(action="specimen.differential").get().data["white_cells"] == 4
    cell = Cell.objects.get(image=frames[0], index=1)  # box 50x50 px
    crop = tech_client.get(f"/cells/{cell.pk}/crop.png")
    assert crop.status_code == 200 and crop["Content-Type"] == "image/png"
    with PILImage.open(io.BytesIO(crop.content)) as im:
        # the box grown by 25 % on each side (75 px); the frame is a 4:3 camera frame squashed to 224x224
        # (core.aspect), so the crop is widened back by 4/3 (100 x 75 px), then scaled to 128 px on its long side
        assert frames[0].width == frames[0].height == 224 and im.size == (128, 96)
    frame_page = tech_client.get(frames[0].get_absolute_url()).content.decode()
    assert "aspect-ratio: 299 / 224" in frame_page  # the frame and its cell overlay at their true shape
    assert f"/specimens/{specimen.pk}/differential/" in tech_client.get(specimen.get_absolute_url()).content.decode()


def test_reclassify_is_audited_and_updates_the_differential(
    tech_client: Client, technologist: Any, frames: list[Image], specimen: Any
) -> None:
    cell = Cell.objects.get(image=frames[0], index=2)  # abstained -> unclassified
    response = tech_client.post(f"/cells/{cell.pk}/reclassify/", {"label": "monocyte"})
    assert response.status_code == 302 and response["Location"].endswith(f"/differential/#cell-{cell.pk}")
    cell.refresh_from_db()
    assert (cell.reviewed_label, cell.reviewed_by, cell.final_label) == ("monocyte", technologist, "monocyte")
    event = AuditEvent.objects.get(action="cell.reclassify")
    assert event.data == {"image_id": frames[0].pk, "model_label": "", "old": UNCLASSIFIED, "new": "monocyte"}
    assert event.actor_username == "tech"
    page = tech_client.get(f"/specimens/{specimen.pk}/differential/").content.decode()
    assert '<tr data-type="monocyte"><td>Monocyte</td><td class="num count">1</td><td class="num percent">25.0' in page
    assert '<tr data-type="unclassified"><td>Unclassified</td><td class="num count">0</td>' in page
    # reclassify again: the audit row says from what to what
    tech_client.post(f"/cells/{cell.pk}/reclassify/", {"label": "lymphocyte"})
    last = AuditEvent.objects.filter(action="cell.reclassify").order_by("-id").first()
    assert last is not None and (last.data["old"], last.data["new"]) == ("monocyte", "lymphocyte")
    # an unknown type is refused, audited, and changes nothing
    tech_client.post(f"/cells/{cell.pk}/reclassify/", {"label": "myeloblast"})
    cell.refresh_from_db()
    assert cell.reviewed_label == "lymphocyte"
    assert AuditEvent.objects.filter(action="cell.reclassify_refused").get().data["new"] == "myeloblast"


def test_permissions(norole: Any, frames: list[Image], specimen: Any, tech_client: Client) -> None:
    cell = Cell.objects.filter(image=frames[0]).first()
    assert cell is not None
    client = login(norole)
    assert client.get(f"/specimens/{specimen.pk}/differential/").status_code == 403
    assert client.get(f"/cells/{cell.pk}/crop.png").status_code == 403
    assert client.post(f"/cells/{cell.pk}/reclassify/", {"label": "basophil"}).status_code == 403
    assert Client().post(f"/cells/{cell.pk}/reclassify/", {"label": "basophil"}).status_code == 302  # to login
    cell.refresh_from_db()
    assert cell.reviewed_label is None
    with pytest.raises(PermissionDenied):
        reclassify_cell(norole, cell, "basophil")
    assert AuditEvent.objects.filter(action="cell.reclassify_refused", actor_username="norole").exists()
    # the differential CSV is an export: reviewers, not technologists
    assert tech_client.get(f"/specimens/{specimen.pk}/differential.csv").status_code == 403
    assert tech_client.get(f"/cells/{cell.pk}/reclassify/").status_code == 405  # POST only


def test_sign_off_locks_the_frames_cells(
    rev_client: Client, reviewer: Any, technologist: Any, frames: list[Image], specimen: Any
) -> None:
    signed, open_ = frames
    before = rev_client.get(f"/images/{signed.pk}/").content.decode()
    assert "also signs off its 3 cells" in before  # the sign-off page says what it covers
    assert (
        rev_client.post(f"/images/{signed.pk}/sign-off/", {"decision": "agree", "recorded_label": "Pre"}).status_code
        == 302
    )
    assert signed.signed_review is not None
    cell = Cell.objects.get(image=signed, index=0)
    with pytest.raises(ImmutableError):
        reclassify_cell(technologist, cell, "basophil")
    tech = login(technologist)
    tech.post(f"/cells/{cell.pk}/reclassify/", {"label": "basophil"})
    cell.refresh_from_db()
    assert cell.reviewed_label is None
    refused = AuditEvent.objects.filter(action="cell.reclassify_refused").order_by("-id").first()
    assert refused is not None and "signed off" in refused.data["reason"]
    with pytest.raises(ImmutableError):
        cell.reviewed_label = "basophil"
        cell.save()
    page = tech.get(f"/images/{signed.pk}/").content.decode()
    assert "signed off with rev's review" in page and 'name="label"' not in page
    diff_page = tech.get(f"/specimens/{specimen.pk}/differential/").content.decode()
    assert "signed by rev" in diff_page and "1 of 2 frames signed off" in diff_page
    # the other frame is not signed: its cell can still be reclassified
    other = Cell.objects.get(image=open_)
    reclassify_cell(technologist, other, "eosinophil")
    other.refresh_from_db()
    assert other.final_label == "eosinophil"


# --- exports --------------------------------------------------------------------------------------


def test_exports_include_the_differential(rev_client: Client, frames: list[Image], specimen: Any) -> None:
    Cell.objects.filter(image=frames[1]).update(reviewed_label="eosinophil")
    response = rev_client.get(f"/specimens/{specimen.pk}/differential.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    lines = response.content.decode().splitlines()
    assert "" not in lines  # one table, one header
    summary = list(csv.DictReader(lines))
    assert list(summary[0]) == DIFFERENTIAL_CSV_COLUMNS
    by_type = {row["cell_type"]: (int(row["count"]), row["percent_of_white_cells"]) for row in summary}
    assert by_type["neutrophil"] == (1, "25.0") and by_type["eosinophil"] == (1, "25.0")
    assert by_type[UNCLASSIFIED] == (1, "25.0") and by_type["white_cells"] == (4, "100.0")
    assert by_type["platelet"] == (0, "") and by_type[ARTEFACT] == (0, "") and by_type["blast"] == (0, "0.0")
    cells_csv = rev_client.get(f"/specimens/{specimen.pk}/cells.csv")
    assert cells_csv.status_code == 200 and cells_csv["Content-Type"].startswith("text/csv")
    cells = list(csv.DictReader(cells_csv.content.decode().splitlines()))
    assert list(cells[0]) == CELLS_CSV_COLUMNS
    assert len(cells) == 4 and {c["final_label"] for c in cells} == {
        "neutrophil",
        "lymphocyte",
        "eosinophil",
        UNCLASSIFIED,
    }
    assert AuditEvent.objects.filter(action="export.differential_csv").exists()
    html = rev_client.get(f"/specimens/{specimen.pk}/report/").content.decode()
    assert "White-cell differential" in html and 'id="differential"' in html and html.count('class="cells"') == 2
    pdf = rev_client.get(f"/specimens/{specimen.pk}/report.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    # the annotated image is in the PDF: one picture fewer without it (identical pictures are stored once)
    with_annotated = pdf.content.count(b"/Subtype /Image")
    CellAnalysis.objects.update(annotated_name="")
    without = rev_client.get(f"/specimens/{specimen.pk}/report.pdf").content.count(b"/Subtype /Image")
    assert with_annotated == without + 1


def test_pdf_differential_text(frames: list[Image], specimen: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PDF's differential table, read back from uncompressed page streams."""
    pdf = uncompressed_pdf(specimen, monkeypatch)
    for text in (
        b"(White-cell differential)",
        b"(Neutrophil)",
        b"(50.0)",
        b"(Unclassified)",
        b"(25.0)",
        b"(White cells)",
    ):
        assert text in pdf, text
    assert b"(4 white cells in 2 frame\\(s\\); excluded: 0" in pdf


# --- API ------------------------------------------------------------------------------------------


def _token_client(user: Any) -> Client:
    from rest_framework.authtoken.models import Token

    return Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")


def test_api_cells_differential_and_reclassify(
    technologist: Any, reviewer: Any, norole: Any, frames: list[Image], specimen: Any
) -> None:
    api = _token_client(technologist)
    listed = api.get(f"/api/cells/?image={frames[0].pk}").json()
    assert listed["count"] == 3
    first = listed["results"][0]
    assert (
        first["box"] == [10, 10, 60, 60] and first["final_label"] == "neutrophil" and first["model_name"] == "wbc_cells"
    )
    assert set(first["probabilities"]) == set(CELL_CLASSES) and first["crop_url"].endswith("/crop.png")
    diff = api.get(f"/api/specimens/{specimen.pk}/differential/").json()
    assert (diff["white_cells"], diff["counts"]["neutrophil"], diff["percent_of_white_cells"]["neutrophil"]) == (
        4,
        2,
        50.0,
    )
    assert (diff["frames"], diff["signed_frames"], diff["counts"][UNCLASSIFIED]) == (2, 0, 1)
    abstained = next(c for c in listed["results"] if c["abstained"])
    url = f"/api/cells/{abstained['id']}/reclassify/"
    response = api.post(url, {"label": "monocyte"}, content_type="application/json")
    assert response.status_code == 200 and response.json()["final_label"] == "monocyte"
    assert response.json()["reviewed_by"] == "tech"
    assert AuditEvent.objects.filter(action="cell.reclassify", actor_username="tech").exists()
    diff = api.get(f"/api/specimens/{specimen.pk}/differential/").json()
    assert (diff["counts"]["monocyte"], diff["counts"][UNCLASSIFIED], diff["reviewed"]) == (1, 0, 1)
    bad = api.post(url, {"label": "myeloblast"}, content_type="application/json")
    assert bad.status_code == 400
    # no role: refused (and audited as a refused access)
    nobody = _token_client(norole)
    assert nobody.get("/api/cells/").status_code == 403
    assert nobody.post(url, {"label": "basophil"}).status_code == 403
    assert nobody.get(f"/api/specimens/{specimen.pk}/differential/").status_code == 403
    assert api.delete(f"/api/cells/{abstained['id']}/").status_code in (403, 405)
    # after the sign-off: 409
    sign_off(reviewer, frames[0], decision="agree")
    locked = api.post(
        f"/api/cells/{abstained['id']}/reclassify/", {"label": "basophil"}, content_type="application/json"
    )
    assert locked.status_code == 409
    assert api.get(f"/api/specimens/{specimen.pk}/differential/").json()["signed_frames"] == 1


def test_refused_reclassification_raises_validation_for_unknown_type(technologist: Any, frames: list[Image]) -> None:
    cell = Cell.objects.filter(image=frames[0]).first()
    assert cell is not None
    with pytest.raises(ValidationError):
        reclassify_cell(technologist, cell, "")


def test_about_page_credits_the_cell_data(tech_client: Client) -> None:
    page = tech_client.get("/about/").content.decode()
    assert "doi:10.1016/j.dib.2020.105474" in page and "CC BY 4.0" in page  # PBC, as its licence asks
    assert "<code>wbc_cells</code>" in page and "BCCD" in page
    assert Client().get("/about/").status_code == 302  # behind the login, as every page


def test_fhir_bundle_has_the_differential(
    rev_client: Client, reviewer: Any, frames: list[Image], specimen: Any
) -> None:
    bundle = rev_client.get(f"/specimens/{specimen.pk}/fhir.json").json()  # validated by fhir.resources
    resources = [e["resource"] for e in bundle["entry"]]
    diff = {r["id"]: r for r in resources if r["id"].startswith("differential-")}
    expected = ("white-cells", "neutrophil", "lymphocyte", UNCLASSIFIED, "blast")  # blasts: even at 0%
    assert set(diff) == {f"differential-{specimen.pk}-{t}" for t in expected}
    neutrophil = diff[f"differential-{specimen.pk}-neutrophil"]
    assert neutrophil["valueQuantity"]["value"] == 50.0 and neutrophil["component"][0]["valueQuantity"]["value"] == 2
    assert neutrophil["status"] == "preliminary"
    assert any(r["resourceType"] == "Device" and r["deviceName"][0]["name"] == "wbc_cells" for r in resources)
    report = next(r for r in resources if r["resourceType"] == "DiagnosticReport")
    assert {"reference": f"Observation/differential-{specimen.pk}-neutrophil"} in report["result"]
    for image in frames:  # every frame signed: the differential is final
        sign_off(reviewer, image, decision="agree")
    bundle = rev_client.get(f"/specimens/{specimen.pk}/fhir.json").json()
    statuses = {e["resource"]["status"] for e in bundle["entry"] if e["resource"]["id"].startswith("differential-")}
    assert statuses == {"final"}


def test_api_upload_answers_the_cell_analysis_per_image(technologist: Any, specimen: Any) -> None:
    api = _token_client(technologist)
    path = smear_paths(1)[0]
    with path.open("rb") as fh:
        response = api.post(
            "/api/analyses/", {"specimen": specimen.pk, "model": "mobilenetv3_lstm", "images": [fh]}, format="multipart"
        )
    assert response.status_code == 201, response.content
    image = response.json()[0]
    job = image["cell_analysis"]
    assert (job["model_name"], job["status"], job["cells"], job["annotated_url"]) == ("wbc_cells", "pending", 0, None)
    assert store_cell_outcome(job["id"], answer(FRAME_A)) == "done"
    body = api.get(f"/api/analyses/?image={image['id']}").json()
    assert body["count"] == 1  # the cell analysis is not one of the leukemia analyses
    cells = api.get(f"/api/cells/?image={image['id']}").json()
    assert cells["count"] == 3 and [c["index"] for c in cells["results"]] == [0, 1, 2]
