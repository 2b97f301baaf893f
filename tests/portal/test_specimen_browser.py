"""Blasts, a missed cell and the specimen's sign-off in real headless Chromium against a live portal.

Frames and their cells come through the worker's own code path (``store_cell_outcome`` with cells
labelled ``blast`` in the wbc_cells contract; the frame models' answers through ``helpers.complete``), so
this exercises the pages: the differential's blast row, line and target progress; reclassifying a cell to
blast in the gallery; adding a cell the model missed by dragging its box on the frame; the specimen summary
that refers (frames that disagree; a blast in a frame called Benign noted) and, once the frames are signed,
the reviewer's sign-off with an interpretive comment. The decision-support notice is on every page. Screenshots go to
test-artifacts/portal-specimen-*.png.
"""

from __future__ import annotations

from typing import Any

import pytest

from portal.actions.outcomes import store_cell_outcome
from portal.actions.patients import create_patient, create_specimen
from portal.actions.signoff import sign_off
from portal.actions.uploads import upload_images
from portal.analyses.models import Cell, SpecimenReview
from portal.audit.models import AuditEvent
from tests.portal.conftest import smear_paths, validated
from tests.portal.helpers import complete
from tests.portal.test_cells import answer
from tests.portal.test_e2e_browser import ARTIFACTS, _login, page  # noqa: F401 (the page fixture)
from tests.portal.test_specimen import FRAME_A, FRAME_B, MODEL

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

NOTICE = "Decision support only"


def _notice_shown(page: Any) -> None:  # noqa: F811
    assert NOTICE in page.inner_text("footer .disclaimer")


def test_blasts_missed_cell_summary_and_specimen_sign_off(
    page: Any,  # noqa: F811
    live_server: Any,
    settings: Any,
    make_user: Any,
) -> None:
    settings.PORTAL_CELL_MODEL = "wbc_cells"
    tech = make_user("tech", "technologist")
    reviewer = make_user("rev", "reviewer")
    patient = create_patient(
        tech, {"mrn": "BLAST-0001", "name": "Rosalind Franklin", "date_of_birth": "1960-07-25", "sex": "F"}
    )
    specimen = create_specimen(tech, patient, {"accession": "BLAST-ACC-1"})
    frames = sorted(upload_images(tech, specimen, validated(smear_paths(2)), MODEL), key=lambda i: i.pk)
    for image, cells, label in zip(frames, (FRAME_A, FRAME_B), ("Pre", "Benign"), strict=True):
        assert store_cell_outcome(image.cell_analysis.pk, answer(cells)) == "done"
        for a in image.analyses.all():
            complete(a, label)
    base = live_server.url
    ARTIFACTS.mkdir(exist_ok=True)

    # the differential: 4 blasts of 10 white cells, over the line, 10 of 100 counted
    _login(page, base, "tech")
    page.goto(f"{base}/specimens/{specimen.pk}/differential/")
    blast_row = page.locator("#differential tr[data-type=blast]")
    assert blast_row.locator("td.count").inner_text() == "4" and blast_row.locator("td.percent").inner_text() == "40.0"
    assert blast_row.locator("td.interval").inner_text() == "16.8-68.7"
    assert "over-line" in (blast_row.get_attribute("class") or "")
    assert page.locator("#blast-line .flag").inner_text() == "Blasts at or over 20%"
    assert page.locator("#count-progress progress").get_attribute("value") == "10"
    assert "10 of 100 white cells counted" in page.inner_text("#count-progress")
    assert page.locator("#type-blast figure.blast").count() == 4
    _notice_shown(page)
    page.screenshot(path=str(ARTIFACTS / "portal-specimen-differential.png"), full_page=True)

    # reclassify a lymphocyte of frame A to blast in the gallery
    lymphocyte = Cell.objects.get(image=frames[0], index=3)
    figure = page.locator(f"#cell-{lymphocyte.pk}")
    figure.locator("select[name=label]").select_option("blast")
    figure.locator("button:has-text('Reclassify')").click()
    page.wait_for_selector("text=now Blast")
    assert page.inner_text("#differential tr[data-type=blast] td.count") == "5"
    assert page.locator(f"#type-blast #cell-{lymphocyte.pk}").count() == 1

    # add a cell the model missed: drag its box on frame A (image pixels 20,165 - 80,215)
    page.goto(f"{base}/images/{frames[0].pk}/")
    picture = page.locator("#cells .cellview img")
    picture.scroll_into_view_if_needed()
    box = picture.bounding_box()
    assert box is not None
    # the 224x224 frame is shown at its true 4:3 shape (core.aspect): wider than tall on screen
    sx, sy = box["width"] / frames[0].width, box["height"] / frames[0].height
    assert sx / sy == pytest.approx(4 / 3, rel=0.02)
    page.mouse.move(box["x"] + 20 * sx, box["y"] + 165 * sy)
    page.mouse.down()
    page.mouse.move(box["x"] + 50 * sx, box["y"] + 190 * sy, steps=4)
    page.mouse.move(box["x"] + 80 * sx, box["y"] + 215 * sy, steps=4)
    page.mouse.up()
    assert page.locator(".cellview .draw-box").is_visible()
    corners = [int(page.input_value(f"#add-cell input[name={k}]")) for k in ("x0", "y0", "x1", "y1")]
    assert all(abs(a - b) <= 2 for a, b in zip(corners, [20, 165, 80, 215], strict=True)), corners
    page.screenshot(path=str(ARTIFACTS / "portal-specimen-add-cell-drawn.png"), full_page=True)
    page.select_option("#add-cell select[name=label]", "blast")
    page.click("#add-cell button[type=submit]")
    page.wait_for_selector("text=added as Blast")
    added = Cell.objects.get(image=frames[0], manual=True)
    assert page.locator(f"#cells svg.overlay g.cell.blast.manual[data-cell='{added.pk}']").count() == 1
    assert page.locator("#cells svg.overlay g.cell.blast").count() == 5  # 3 found, 1 reclassified, 1 added
    _notice_shown(page)
    page.screenshot(path=str(ARTIFACTS / "portal-specimen-add-cell.png"), full_page=True)
    assert AuditEvent.objects.get(action="cell.add").actor_username == "tech"
    page.click("header button:has-text('Log out')")

    # the reviewer's summary: it refers, and says why
    _login(page, base, "rev")
    page.goto(f"{base}/specimens/{specimen.pk}/summary/")
    assert page.locator("#conclusion").get_attribute("data-refer") == "true"
    assert page.inner_text("#conclusion-label") == "Refer: no specimen conclusion"
    assert "The frames disagree" in page.inner_text("#reasons") and page.locator("#checks-ok").is_visible()
    # frame B's one blast among 4 white cells is under the line that refers: a note for the reviewer
    note = "is called Benign (hematogones) and 1 blast was found among its 4 white cells, under the line that refers"
    assert note in page.inner_text("#notes")
    assert page.locator("#not-ready").is_visible() and page.locator("#specimen-sign-off").count() == 0
    assert "Blasts 6 of 11 white cells: 54.5% (95% CI 28.0-78.7%)" in page.inner_text("#conclusion-blasts")
    _notice_shown(page)
    assert NOTICE in page.inner_text("main .disclaimer.banner")
    page.screenshot(path=str(ARTIFACTS / "portal-specimen-summary-refer.png"), full_page=True)

    # once each frame is signed (frame B reclassified as Pre-B ALL), the reviewer signs the specimen off
    sign_off(reviewer, frames[0], decision="agree")
    sign_off(reviewer, frames[1], decision="reclassify", final_label="Pre", comment="blast at the microscope")
    page.reload()
    assert page.inner_text("#conclusion-label") == "Pre-B ALL" and page.locator("#checks-ok").is_visible()
    page.screenshot(path=str(ARTIFACTS / "portal-specimen-summary-ready.png"), full_page=True)
    page.check("#specimen-sign-off input[name=decision][value=agree]")
    comment = "Pre-B ALL: 55% blasts in 11 white cells (count under target). Marrow aspirate advised."
    page.fill("#specimen-sign-off textarea[name=comment]", comment)
    page.click("#specimen-sign-off button[type=submit]")
    page.wait_for_selector("#specimen-review")
    assert page.inner_text("#specimen-final-label") == "Pre" and page.inner_text("#specimen-comment") == comment
    assert page.locator("#specimen-sign-off").count() == 0  # signed once, never again
    _notice_shown(page)
    page.screenshot(path=str(ARTIFACTS / "portal-specimen-signed.png"), full_page=True)
    review = SpecimenReview.objects.get(specimen=specimen)
    assert (review.final_label, review.reviewer_name, review.comment) == ("Pre", "rev", comment)
    assert AuditEvent.objects.filter(action="specimen.sign_off", actor_username="rev").count() == 1
    # the specimen page says it is signed and offers no upload
    page.goto(f"{base}{specimen.get_absolute_url()}")
    assert "takes no more images" in page.inner_text("#specimen-signed")
    assert page.locator("a:has-text('Upload images')").count() == 0
    assert page.outside_requests == []  # type: ignore[attr-defined]
