"""The differential as a haematology lab reports it, and artefacts a technologist excludes.

Percentages are of the white cells only (core.registry.LEUKOCYTE_CLASSES + unclassified); erythroblasts
(nucleated red cells) are counted per 100 white cells, platelets counted only; a detection reclassified
as an artefact ("not a cell") is excluded from every figure. Checked on the arithmetic itself, then on
one specimen through every place the differential appears: page, frame page, CSV, PDF, printable
report, FHIR and the API, before and after a technologist marks a detection as an artefact.
"""

from __future__ import annotations

import csv
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from core.cell_answer import ARTEFACT, UNCLASSIFIED
from core.registry import CELL_CLASSES, LEUKOCYTE_CLASSES
from portal.actions.cells import reclassify_cell
from portal.actions.outcomes import store_cell_outcome
from portal.actions.signoff import sign_off
from portal.analyses.differential import CATEGORIES, NRBC, PLATELET, WHITE_CATEGORIES, describe, differential
from portal.analyses.models import Cell, CellAnalysis, Image, ImmutableError
from portal.audit.models import AuditEvent
from tests.portal.helpers import complete, uncompressed_pdf
from tests.portal.test_cells import _cell, _token_client, _upload, answer

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _cells_on(settings: Any) -> None:
    settings.PORTAL_CELL_MODEL = "wbc_cells"


def _typed(final: str, reviewed: str | None = None) -> Any:
    return SimpleNamespace(final_label=final, reviewed_label=reviewed)


# --- the arithmetic -------------------------------------------------------------------------------


def test_categories_come_from_the_registry() -> None:
    assert (*LEUKOCYTE_CLASSES, UNCLASSIFIED) == WHITE_CATEGORIES
    assert (NRBC, PLATELET) == ("erythroblast", "platelet") and NRBC not in WHITE_CATEGORIES
    assert set(CATEGORIES) == {*CELL_CLASSES, UNCLASSIFIED, ARTEFACT} and CATEGORIES[-1] == ARTEFACT
    assert describe(ARTEFACT) == "Artefact (not a cell)" and describe(UNCLASSIFIED) == "Unclassified"


def test_denominator_is_the_white_cells_only() -> None:
    cells = (
        [_typed("neutrophil")] * 5
        + [_typed("lymphocyte")] * 2
        + [_typed("monocyte", "monocyte")]
        + [_typed(UNCLASSIFIED)] * 2  # white cells nobody typed: in the denominator
        + [_typed(NRBC)] * 3
        + [_typed(PLATELET)] * 7
        + [_typed(ARTEFACT, ARTEFACT)] * 4
    )
    diff = differential(cells)
    rows = {r.category: r for r in diff.rows}
    assert (diff.white_cells, diff.excluded, diff.reviewed, diff.counted) == (10, 4, 5, 20)
    assert rows["neutrophil"].percent == 50.0 and rows["lymphocyte"].percent == 20.0
    assert rows["monocyte"].percent == 10.0 and rows[UNCLASSIFIED].percent == 20.0
    assert sum(r.percent or 0.0 for r in diff.white_rows) == pytest.approx(100.0)
    # erythroblasts: a count and per 100 white cells, no percentage; platelets and artefacts: counts only
    assert (rows[NRBC].count, rows[NRBC].percent, rows[NRBC].per_100_wbc) == (3, None, 30.0)
    assert (rows[PLATELET].count, rows[PLATELET].percent, rows[PLATELET].per_100_wbc) == (7, None, None)
    assert (rows[ARTEFACT].count, rows[ARTEFACT].percent, rows[ARTEFACT].group) == (4, None, "excluded")
    body = diff.as_dict()
    assert body["counts"] == {c: rows[c].count for c in CATEGORIES}
    assert body["percent_of_white_cells"] == {
        "blast": 0.0,
        "basophil": 0.0,
        "eosinophil": 0.0,
        "ig": 0.0,
        "lymphocyte": 20.0,
        "monocyte": 10.0,
        "neutrophil": 50.0,
        UNCLASSIFIED: 20.0,
    }
    assert (body["white_cells"], body["excluded"], body["nrbc_per_100_wbc"]) == (10, 4, 30.0)


def test_platelets_and_artefacts_do_not_change_the_percentages() -> None:
    white = [_typed("neutrophil")] * 2 + [_typed("eosinophil")]
    before = differential(white).as_dict()["percent_of_white_cells"]
    after = differential(white + [_typed(PLATELET)] * 9 + [_typed(NRBC)] + [_typed(ARTEFACT, ARTEFACT)] * 5)
    assert after.as_dict()["percent_of_white_cells"] == before
    assert before["neutrophil"] == 66.7 and before["eosinophil"] == 33.3
    assert after.nrbc_per_100_wbc == pytest.approx(100 / 3)
    assert after.as_dict()["nrbc_per_100_wbc"] == 33.3


def test_no_white_cell_divides_by_nothing() -> None:
    diff = differential([_typed(PLATELET)] * 4 + [_typed(NRBC)] * 2 + [_typed(ARTEFACT, ARTEFACT)])
    assert diff.white_cells == 0 and all(r.percent == 0.0 for r in diff.white_rows)
    assert diff.nrbc.count == 2 and diff.nrbc_per_100_wbc is None  # undefined, not 0 and not infinite
    body = diff.as_dict()
    assert body["nrbc_per_100_wbc"] is None and set(body["percent_of_white_cells"].values()) == {0.0}
    empty = differential([])
    assert (empty.white_cells, empty.excluded, empty.counted, empty.nrbc_per_100_wbc) == (0, 0, 0, None)


# --- one specimen, everywhere -------------------------------------------------------------------------

#: 2 neutrophils, 1 lymphocyte, 1 unclassified (4 white cells), 1 erythroblast, 1 platelet
FRAME = [
    _cell([10, 10, 60, 60], "neutrophil", "neutrophil", 0.95),
    _cell([100, 20, 150, 70], "neutrophil", "neutrophil", 0.9),
    _cell([30, 120, 90, 180], "lymphocyte", "lymphocyte", 0.9),
    _cell([120, 120, 170, 170], None, "monocyte", 0.4),
    _cell([200, 20, 240, 60], "erythroblast", "erythroblast", 0.9),
    _cell([200, 120, 212, 132], "platelet", "platelet", 0.9),
]


@pytest.fixture
def frame(technologist: Any, specimen: Any) -> Image:
    (image,) = _upload(technologist, specimen, 1, ["mobilenetv3_lstm"])
    assert store_cell_outcome(image.cell_analysis.pk, answer(FRAME)) == "done"
    for a in image.analyses.all():
        complete(a, "Pre")
    return image


def _csv_summary(client: Client, specimen: Any) -> dict[str, dict[str, str]]:
    lines = client.get(f"/specimens/{specimen.pk}/differential.csv").content.decode().splitlines()
    return {row["cell_type"]: row for row in csv.DictReader(lines)}


def _fhir(client: Client, specimen: Any) -> dict[str, dict[str, Any]]:
    bundle = client.get(f"/specimens/{specimen.pk}/fhir.json").json()
    prefix = f"differential-{specimen.pk}-"
    return {
        e["resource"]["id"].removeprefix(prefix): e["resource"]
        for e in bundle["entry"]
        if e["resource"]["id"].startswith(prefix)
    }


def test_every_view_reports_white_cell_percentages_nrbc_and_platelets(
    rev_client: Client, technologist: Any, frame: Image, specimen: Any
) -> None:
    page = rev_client.get(f"/specimens/{specimen.pk}/differential/").content.decode()
    assert '<tr data-type="neutrophil"><td>Neutrophil</td><td class="num count">2</td><td class="num percent">50.0' in (
        page
    )
    assert (
        '<tr data-type="unclassified"><td>Unclassified</td><td class="num count">1</td><td class="num percent">25.0'
        in (page)
    )
    assert '<th class="num" data-total>4</th>' in page and "% of white cells" in page
    assert "data-nrbc>25.0 per 100 white cells</td>" in page
    assert (
        '<tr data-type="platelet"><td>Platelet</td><td class="num count">1</td><td class="num">count only</td>' in page
    )
    assert "data-excluded>0</td>" in page and 'class="num percent">' not in page.split('data-type="erythroblast"')[1]

    summary = _csv_summary(rev_client, specimen)
    assert summary["neutrophil"]["percent_of_white_cells"] == "50.0" and summary["white_cells"]["count"] == "4"
    assert (summary[NRBC]["count"], summary[NRBC]["percent_of_white_cells"], summary[NRBC]["per_100_white_cells"]) == (
        "1",
        "",
        "25.0",
    )
    assert (summary[PLATELET]["count"], summary[PLATELET]["percent_of_white_cells"]) == ("1", "")

    fhir = _fhir(rev_client, specimen)
    assert set(fhir) == {"white-cells", "neutrophil", "lymphocyte", UNCLASSIFIED, NRBC, PLATELET, "blast"}
    assert fhir["white-cells"]["valueQuantity"]["value"] == 4 and "component" not in fhir["white-cells"]
    assert fhir["white-cells"]["code"]["coding"][0]["code"] == "11282-1"  # Cells Counted Total [#] in Blood
    neutrophil = fhir["neutrophil"]
    assert neutrophil["valueQuantity"]["value"] == 50.0 and neutrophil["valueQuantity"]["code"] == "%"
    assert neutrophil["code"]["coding"] == [
        {"system": "http://loinc.org", "code": "26511-6", "display": "Neutrophils/100 leukocytes in Blood"}
    ]
    count = neutrophil["component"][0]
    assert count["valueQuantity"]["value"] == 2 and "of 4 white cells" in count["code"]["text"]
    assert [c["valueQuantity"]["value"] for c in neutrophil["component"][1:]] == [15.0, 85.0]  # Wilson 2 of 4
    assert fhir["blast"]["valueQuantity"]["value"] == 0.0 and fhir["blast"]["code"]["coding"][0]["code"] == "26446-5"
    assert "coding" not in fhir[UNCLASSIFIED]["code"] and "coding" not in fhir[NRBC]["code"]  # no verified code
    nrbc = fhir[NRBC]
    assert nrbc["valueQuantity"]["value"] == 1
    assert [c["valueQuantity"]["code"] for c in nrbc["component"]] == ["/100{WBCs}"]
    assert nrbc["component"][0]["valueQuantity"]["value"] == 25.0
    assert fhir[PLATELET]["valueQuantity"]["value"] == 1 and "component" not in fhir[PLATELET]  # no percentage

    api = _token_client(technologist).get(f"/api/specimens/{specimen.pk}/differential/").json()
    assert (api["white_cells"], api["excluded"], api["reviewed"], api["nrbc_per_100_wbc"]) == (4, 0, 0, 25.0)
    assert api["counts"][NRBC] == 1 and api["counts"][PLATELET] == 1 and api["counts"][ARTEFACT] == 0
    assert set(api["percent_of_white_cells"]) == set(WHITE_CATEGORIES)
    assert api["percent_of_white_cells"]["neutrophil"] == 50.0 and NRBC not in api["percent_of_white_cells"]

    html = rev_client.get(f"/specimens/{specimen.pk}/report/").content.decode()
    assert "data-nrbc>25.0 per 100 white cells" in html and '<th class="num" data-total>4</th>' in html


def test_reclassify_as_artefact_is_audited_excluded_and_locked(
    tech_client: Client, rev_client: Client, technologist: Any, reviewer: Any, frame: Image, specimen: Any
) -> None:
    neutrophil = Cell.objects.get(image=frame, index=1)
    response = tech_client.post(f"/cells/{neutrophil.pk}/reclassify/", {"label": ARTEFACT})
    assert response.status_code == 302
    neutrophil.refresh_from_db()
    assert (neutrophil.reviewed_label, neutrophil.final_label, neutrophil.label) == (ARTEFACT, ARTEFACT, "neutrophil")
    event = AuditEvent.objects.get(action="cell.reclassify")
    assert event.data == {"image_id": frame.pk, "model_label": "neutrophil", "old": "neutrophil", "new": ARTEFACT}
    assert event.actor_username == "tech"

    # 3 white cells now: 1 neutrophil, 1 lymphocyte, 1 unclassified; the NRBC is 1 per 3 white cells
    page = tech_client.get(f"/specimens/{specimen.pk}/differential/").content.decode()
    # named as the image page's table numbers it (#1 the model's first cell of the frame), not by its row id
    assert f"Cell #{neutrophil.index + 1} of {frame.original_name}: now Artefact (not a cell)." in page
    assert '<tr data-type="neutrophil"><td>Neutrophil</td><td class="num count">1</td><td class="num percent">33.3' in (
        page
    )
    assert '<th class="num" data-total>3</th>' in page and "data-excluded>1</td>" in page
    assert "data-nrbc>33.3 per 100 white cells" in page and "excluded: 1 (artefacts: not cells)" in page
    # the gallery: the artefact in its own group, after every cell type
    groups = [chunk.split('"', 1)[0] for chunk in page.split('<section class="gallery-group')[1:]]
    assert groups[-1] == " excluded" and page.rindex('id="type-artefact"') > page.rindex('id="type-platelet"')
    assert f'id="cell-{neutrophil.pk}"' in page.split('id="type-artefact"')[1]
    assert '<option value="artefact"' in page and ">Artefact (not a cell)</option>" in page

    summary = _csv_summary(rev_client, specimen)
    assert (summary[ARTEFACT]["group"], summary[ARTEFACT]["count"]) == ("excluded", "1")
    assert summary["white_cells"]["count"] == "3" and summary["neutrophil"]["percent_of_white_cells"] == "33.3"
    assert summary[NRBC]["per_100_white_cells"] == "33.3"
    fhir = _fhir(rev_client, specimen)
    assert ARTEFACT not in fhir and fhir["white-cells"]["valueQuantity"]["value"] == 3
    assert "Excluded: 1" in fhir["white-cells"]["note"][0]["text"]
    assert fhir["neutrophil"]["valueQuantity"]["value"] == 33.3
    api = _token_client(technologist)
    body = api.get(f"/api/specimens/{specimen.pk}/differential/").json()
    assert (body["white_cells"], body["excluded"], body["reviewed"], body["counts"][ARTEFACT]) == (3, 1, 1, 1)
    assert body["percent_of_white_cells"]["neutrophil"] == 33.3 and ARTEFACT not in body["percent_of_white_cells"]
    assert api.get(f"/api/cells/{neutrophil.pk}/").json()["final_label"] == ARTEFACT

    # the API reclassifies to "artefact" as well, and back
    lymphocyte = Cell.objects.get(image=frame, index=2)
    url = f"/api/cells/{lymphocyte.pk}/reclassify/"
    assert api.post(url, {"label": ARTEFACT}, content_type="application/json").json()["final_label"] == ARTEFACT
    assert api.post(url, {"label": "lymphocyte"}, content_type="application/json").status_code == 200
    trail = [e.data["new"] for e in AuditEvent.objects.filter(action="cell.reclassify", object_id=str(lymphocyte.pk))]
    assert sorted(trail) == sorted([ARTEFACT, "lymphocyte"])

    # sign-off locks artefacts like any cell: neither un-marking nor marking another one
    sign_off(reviewer, frame, decision="agree")
    with pytest.raises(ImmutableError):
        reclassify_cell(technologist, neutrophil, "neutrophil")
    with pytest.raises(ImmutableError):
        reclassify_cell(technologist, lymphocyte, ARTEFACT)
    assert api.post(url, {"label": ARTEFACT}, content_type="application/json").status_code == 409
    refused = AuditEvent.objects.filter(action="cell.reclassify_refused").order_by("-id").first()
    assert refused is not None and refused.data["new"] == ARTEFACT and "signed off" in refused.data["reason"]
    assert _fhir(rev_client, specimen)["white-cells"]["status"] == "final"


def test_pdf_reports_white_cells_nrbc_platelets_and_excluded(
    technologist: Any, frame: Image, specimen: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reclassify_cell(technologist, Cell.objects.get(image=frame, index=1), ARTEFACT)
    pdf = uncompressed_pdf(specimen, monkeypatch)
    for text in (
        b"(% of white cells)",
        b"(White cells)",
        b"(33.3 per 100 white cells)",
        b"(count only)",
        b"(Excluded: Artefact \\(not a cell\\))",
        b"(not counted)",
    ):
        assert text in pdf, text
    assert b"(3 white cells in 1 frame\\(s\\); excluded: 1" in pdf


def test_only_a_reviewer_may_say_artefact_never_the_model(technologist: Any, specimen: Any, frame: Image) -> None:
    assert ARTEFACT not in dict(Cell._meta.get_field("label").choices or [])
    assert ARTEFACT in dict(Cell._meta.get_field("reviewed_label").choices or [])
    (broken,) = _upload(technologist, specimen, 1, ["mobilenetv3_lstm"])
    bad = [dict(FRAME[0], label=ARTEFACT)]  # an answer saying "artefact" breaks the model's contract
    assert store_cell_outcome(broken.cell_analysis.pk, answer(bad)) == "failed"
    assert "unknown type 'artefact'" in CellAnalysis.objects.get(image=broken).error_message
    with pytest.raises(ValidationError):
        reclassify_cell(technologist, Cell.objects.get(image=frame, index=0), "debris")
    frame_page = Client()
    frame_page.force_login(technologist)
    html = frame_page.get(f"/images/{frame.pk}/").content.decode()
    assert '<option value="artefact"' in html  # the frame page offers it too
