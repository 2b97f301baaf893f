"""Cells in real headless Chromium against a live portal: the annotation toggle and reclassification.

The frame's cells are stored through the worker's own code path (``store_cell_outcome`` with an
answer in the wbc_cells contract, as in test_cells.py), so this test exercises the pages, not the model.
The toggle must hide and show the overlay without leaving the page; reclassifying a cell in the gallery
must update the differential. Screenshots go to test-artifacts/portal-cells*.png.
"""

from __future__ import annotations

from typing import Any

import pytest

from portal.actions.outcomes import store_cell_outcome
from portal.actions.patients import create_patient, create_specimen
from portal.actions.uploads import upload_images
from portal.analyses.differential import ARTEFACT, WHITE_CATEGORIES
from portal.analyses.models import Cell
from portal.audit.models import AuditEvent
from tests.portal.conftest import smear_paths
from tests.portal.test_cells import FRAME_A, answer
from tests.portal.test_e2e_browser import ARTIFACTS, _login, page  # noqa: F401 (the page fixture)

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_annotation_toggle_and_reclassify_in_the_gallery(
    page: Any,  # noqa: F811
    live_server: Any,
    settings: Any,
    make_user: Any,
) -> None:
    from portal.analyses.validation import validate_image_bytes

    settings.PORTAL_CELL_MODEL = "wbc_cells"
    tech = make_user("tech", "technologist")
    patient = create_patient(
        tech, {"mrn": "CELL-0001", "name": "Marie Curie", "date_of_birth": "1967-11-07", "sex": "F"}
    )
    specimen = create_specimen(tech, patient, {"accession": "CELL-ACC-1"})
    path = smear_paths(1)[0]
    image = upload_images(tech, specimen, [validate_image_bytes(path.name, path.read_bytes())], ["mobilenetv3_lstm"])[0]
    assert store_cell_outcome(image.cell_analysis.pk, answer(FRAME_A)) == "done"
    base = live_server.url

    _login(page, base, "tech")
    page.goto(f"{base}/images/{image.pk}/")
    overlay = page.locator("#cells svg.overlay")
    assert overlay.is_visible()
    assert page.locator("#cells svg.overlay rect.box").count() == 3
    assert page.locator("#cells svg.overlay polygon.nucleus").count() == 3
    # the overlay lies exactly over the picture
    img_box = page.locator("#cells .cellview img").bounding_box()
    svg_box = overlay.bounding_box()
    assert img_box and svg_box and abs(img_box["width"] - svg_box["width"]) < 2
    assert abs(img_box["height"] - svg_box["height"]) < 2
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "portal-cells-annotated.png"), full_page=True)
    url = page.url
    page.click("label.overlay-label")  # original only
    assert not overlay.is_visible() and page.locator("#cells .cellview img").is_visible() and page.url == url
    page.screenshot(path=str(ARTIFACTS / "portal-cells-original.png"), full_page=True)
    page.click("label.overlay-label")  # annotated again, still the same page
    assert overlay.is_visible() and page.url == url

    # the differential: 1 neutrophil, 1 lymphocyte, 1 unclassified (the abstention)
    page.click("text=Specimen differential")
    page.wait_for_selector("h1:has-text('Differential')")
    assert page.inner_text("#differential tr[data-type=unclassified] td.count") == "1"
    assert page.inner_text("#differential tr[data-type=monocyte] td.count") == "0"
    assert page.locator(".gallery figure img").count() == 3
    for i in range(3):  # lazy-loaded crops: each loads once scrolled into view
        crop = page.locator(".gallery figure img").nth(i)
        crop.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=crop.element_handle())
    unclassified = Cell.objects.get(image=image, index=2)
    figure = page.locator(f"#cell-{unclassified.pk}")
    figure.locator("select[name=label]").select_option("monocyte")
    figure.locator("button:has-text('Reclassify')").click()
    page.wait_for_selector("text=now Monocyte")
    assert page.inner_text("#differential tr[data-type=monocyte] td.count") == "1"
    assert page.inner_text("#differential tr[data-type=monocyte] td.percent") == "33.3"
    assert page.inner_text("#differential tr[data-type=unclassified] td.count") == "0"
    assert page.locator("#type-monocyte figure").count() == 1
    page.screenshot(path=str(ARTIFACTS / "portal-cells-differential.png"), full_page=True)
    event = AuditEvent.objects.get(action="cell.reclassify")
    assert (event.actor_username, event.data["old"], event.data["new"]) == ("tech", "unclassified", "monocyte")
    # "not a cell": the lymphocyte becomes an artefact, excluded; the percentages are of the 2 white cells left
    lymphocyte = Cell.objects.get(image=image, index=1)
    figure = page.locator(f"#cell-{lymphocyte.pk}")
    figure.locator("select[name=label]").select_option(ARTEFACT)
    figure.locator("button:has-text('Reclassify')").click()
    page.wait_for_selector("text=now Artefact (not a cell)")
    assert page.inner_text("#differential [data-total]") == "2"
    assert page.inner_text("#differential [data-excluded]") == "1"
    assert page.inner_text("#differential tr[data-type=monocyte] td.percent") == "50.0"
    assert page.locator(".gallery-group").last.get_attribute("id") == "type-artefact"
    assert page.locator(f"#type-artefact #cell-{lymphocyte.pk}").count() == 1
    page.screenshot(path=str(ARTIFACTS / "portal-cells-artefact.png"), full_page=True)
    last = AuditEvent.objects.filter(action="cell.reclassify").order_by("-id").first()
    assert last is not None and (last.data["old"], last.data["new"]) == ("lymphocyte", ARTEFACT)
    assert page.outside_requests == []  # type: ignore[attr-defined]


def test_real_cell_model_upload_toggle_and_reclassify(
    page: Any,  # noqa: F811
    live_server: Any,
    use_torchserve: Any,
    settings: Any,
    make_user: Any,
) -> None:
    """The same flow on a real BCCD frame analysed by the real TorchServe's wbc_cells, uploaded in the browser."""
    import threading

    from tests.portal.test_e2e_browser import _run_jobs_until_idle
    from training.cell_data import bccd_split

    settings.PORTAL_CELL_MODEL = "wbc_cells"
    tech = make_user("tech", "technologist")
    patient = create_patient(
        tech, {"mrn": "CELL-0002", "name": "Dorothy Hodgkin", "date_of_birth": "1970-05-12", "sex": "F"}
    )
    specimen = create_specimen(tech, patient, {"accession": "CELL-ACC-2"})
    frame = next(f for f in bccd_split()[1] if len(f.wbc_boxes) == 1)
    base = live_server.url

    _login(page, base, "tech")
    page.goto(f"{base}/upload/?specimen={specimen.pk}")
    page.set_input_files("input[name=images]", [str(frame.image)])
    page.select_option("select[name=model]", "mobilenetv3_lstm")
    page.click("#upload-submit")
    page.wait_for_selector("h1:has-text('Results')")
    assert page.locator("#cells [data-analysis-status^=cells-]").count() == 1  # queued, followed live
    worker = threading.Thread(target=_run_jobs_until_idle, daemon=True)
    worker.start()
    page.wait_for_selector("#cells[data-status=done]", timeout=300_000)  # the page reloads itself when all are in
    worker.join(timeout=300)
    image = specimen.images.get()
    n = image.cells.count()
    assert n >= 1, "the cell model found no white cell on a BCCD frame with one"
    overlay = page.locator("#cells svg.overlay")
    assert overlay.is_visible() and page.locator("#cells svg.overlay rect.box").count() == n
    assert page.locator("#cells tr[data-cell-row]").count() == n
    page.screenshot(path=str(ARTIFACTS / "portal-cells-real.png"), full_page=True)
    url = page.url
    page.click("label.overlay-label")
    assert not overlay.is_visible() and page.url == url
    page.click("label.overlay-label")
    assert overlay.is_visible()

    page.click("text=Specimen differential")
    page.wait_for_selector("h1:has-text('Differential')")
    white = sum(1 for c in image.cells.all() if c.final_label in WHITE_CATEGORIES)  # platelets/NRBC apart
    assert page.inner_text("#differential [data-total]") == str(white)
    cell = image.cells.order_by("index").first()
    assert cell is not None
    new = "basophil" if cell.final_label != "basophil" else "eosinophil"
    white += cell.final_label not in WHITE_CATEGORIES  # a white cell now, if it was not one
    before = int(page.inner_text(f"#differential tr[data-type={new}] td.count"))
    figure = page.locator(f"#cell-{cell.pk}")
    figure.locator("select[name=label]").select_option(new)
    figure.locator("button:has-text('Reclassify')").click()
    page.wait_for_selector(f"text=Cell #{cell.index + 1} of {image.original_name}: now")
    assert int(page.inner_text(f"#differential tr[data-type={new}] td.count")) == before + 1
    assert page.inner_text("#differential [data-total]") == str(white)
    page.screenshot(path=str(ARTIFACTS / "portal-cells-real-differential.png"), full_page=True)
    event = AuditEvent.objects.get(action="cell.reclassify")
    assert (event.data["old"], event.data["new"]) == (cell.final_label, new)
    assert page.outside_requests == []  # type: ignore[attr-defined]
