"""The portal's forms and pages as a new user meets them, in real headless Chromium against a live portal.

- Sign-off: a refused form comes back exactly as the reviewer left it (decision, class, comment), the
  error beside its field, and the buttons say what will be recorded; with the page's script off, the
  server refuses a form whose choice differs from what the button said, and nothing else is recorded.
- Upload: a bad file does not cost the good ones; each refused file is listed with its reason; too many
  files, or a file over the size limit, is said on the page before anything is sent.
- An image every model refused says so once (no empty consensus, no "0 cells found").
- Narrow screens (400 px): the image page with its sign-off panel, the worklist and the dashboard fit.
- The skip link and the API docs' way back to the portal.

The models' answers are stored through the worker's own code path (store_outcome and
store_cell_outcome, as in test_review.py and test_cells.py): these tests exercise the pages, not
the models. Screenshots go to test-artifacts/portal-form-*.png.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from portal.actions.outcomes import store_cell_outcome, store_outcome
from portal.actions.patients import create_patient, create_specimen
from portal.actions.uploads import upload_images
from portal.analyses.inference import Refusal
from portal.analyses.models import Image, ImageReview
from portal.audit.models import AuditEvent
from tests.portal.conftest import smear_paths, validated
from tests.portal.helpers import complete
from tests.portal.test_e2e_browser import ARTIFACTS, _login, page  # noqa: F401 (the page fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MODELS = ["xception_bigru", "effnetb3_bigru", "effnetb3_vit", "mobilenetv3_lstm"]


def _specimen(tech: Any, mrn: str = "UI-0001") -> Any:
    patient = create_patient(
        tech, {"mrn": mrn, "name": "Barbara McClintock", "date_of_birth": "1962-06-16", "sex": "F"}
    )
    return create_specimen(tech, patient, {"accession": f"{mrn}-ACC"})


def _finished_image(tech: Any, specimen: Any, label: str = "Early", index: int = 0) -> Image:
    """A real smear frame whose four models all answered ``label`` (a consensus of 4 of 4)."""
    image = upload_images(tech, specimen, validated([smear_paths(index + 1)[index]]), MODELS)[0]
    for analysis in image.analyses.all():
        complete(analysis, label)
    return image


def _screenshot(page: Any, name: str) -> None:  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"portal-form-{name}.png"), full_page=True)


def test_a_refused_sign_off_comes_back_as_the_reviewer_left_it(
    page: Any,  # noqa: F811
    live_server: Any,
    make_user: Any,
) -> None:
    """The reported case: Reclassify, Pre, no comment, Sign off. It must not come back as "Agree"."""
    tech = make_user("tech", "technologist")
    make_user("rev", "reviewer")
    image = _finished_image(tech, _specimen(tech))
    _login(page, live_server.url, "rev")
    page.goto(f"{live_server.url}/images/{image.pk}/")
    form = page.locator("form#sign-off")
    first, then_next = form.locator("button[data-sign-off]").nth(0), form.locator("button[data-sign-off]").nth(1)
    assert page.inner_text("#consensus-label").startswith("Early Pre-B ALL (models ranking it first: 4 of 4)")
    assert first.inner_text() == "Sign off as Early Pre-B ALL (agreeing with the consensus)"
    select = form.locator("select[name=final_label]")
    assert select.is_disabled()  # "agree": the class list cannot contradict the decision

    form.locator("input[name=decision][value=reclassify]").check()
    assert select.is_enabled() and first.is_disabled()  # no class chosen yet: nothing to sign
    assert first.inner_text() == "Choose the class to sign off"
    select.select_option("Pre")
    assert first.inner_text() == "Sign off as Pre-B ALL (reclassified)"
    assert then_next.inner_text() == "Sign off as Pre-B ALL (reclassified) and open the next image"
    first.click()  # no comment

    page.wait_for_selector("p.msg.error")
    assert "Not signed: A reclassification needs a comment: say why." in page.inner_text("p.msg.error")
    form = page.locator("form#sign-off")
    assert form.locator("input[name=decision][value=reclassify]").is_checked()
    assert not form.locator("input[name=decision][value=agree]").is_checked()
    assert form.locator("select[name=final_label]").input_value() == "Pre"
    # the error sits with the comment field it is about
    comment_group = form.locator("div:has(> textarea[name=comment])")
    assert "A reclassification needs a comment" in comment_group.inner_text()
    assert form.locator("button[data-sign-off]").nth(0).inner_text() == "Sign off as Pre-B ALL (reclassified)"
    _screenshot(page, "sign-off-refused")
    assert not ImageReview.objects.exists()
    assert AuditEvent.objects.filter(action="image.sign_off_refused", actor_username="rev").count() == 1

    form.locator("textarea[name=comment]").fill("Reclassifying to Pre")
    form.locator("button[data-sign-off]").nth(0).click()
    page.wait_for_selector("#final-label")
    assert page.inner_text("#final-label .final-label") == "Pre-B ALL"
    assert "Reclassified (the consensus was Early Pre-B ALL)" in page.inner_text("#final-label")
    review = ImageReview.objects.get(image=image)
    assert (review.decision, review.final_label, review.consensus_label, review.comment) == (
        "reclassify",
        "Pre",
        "Early",
        "Reclassifying to Pre",
    )
    _screenshot(page, "sign-off-signed")


def test_without_the_script_a_choice_the_button_did_not_say_is_refused(
    page: Any,  # noqa: F811
    live_server: Any,
    make_user: Any,
) -> None:
    """Script off: the button still says "agreeing with the consensus" when Reclassify/Pre is picked. The
    server refuses (the form would record Pre-B ALL, not what the button said), the page comes back with
    the reviewer's choices and the button saying Pre-B ALL; the second press records Pre."""
    tech = make_user("tech", "technologist")
    make_user("rev", "reviewer")
    image = _finished_image(tech, _specimen(tech))
    _login(page, live_server.url, "rev")  # logs in with the script on (the second-factor page), then off
    context = page.context.browser.new_context(java_script_enabled=False, viewport={"width": 1400, "height": 1000})
    context.add_cookies(page.context.cookies())
    plain = context.new_page()
    plain.goto(f"{live_server.url}/images/{image.pk}/")
    form = plain.locator("form#sign-off")
    form.locator("input[name=decision][value=reclassify]").check()
    form.locator("select[name=final_label]").select_option("Pre")
    form.locator("textarea[name=comment]").fill("fine chromatin")
    button = form.locator("button[data-sign-off]").nth(0)
    assert button.inner_text() == "Sign off as Early Pre-B ALL (agreeing with the consensus)"  # no script
    button.click()
    plain.wait_for_selector("p.msg.error")
    assert "The form would record Pre-B ALL, not Early Pre-B ALL: nothing was signed." in plain.inner_text("main")
    assert not ImageReview.objects.exists()
    form = plain.locator("form#sign-off")
    assert form.locator("input[name=decision][value=reclassify]").is_checked()
    assert form.locator("textarea[name=comment]").input_value() == "fine chromatin"
    button = form.locator("button[data-sign-off]").nth(0)
    assert button.inner_text() == "Sign off as Pre-B ALL (reclassified)"
    _screenshot(plain, "sign-off-no-script")
    button.click()
    plain.wait_for_selector("#final-label")
    assert ImageReview.objects.get(image=image).final_label == "Pre"
    context.close()


def _noise_png(path: Path, side: int) -> Path:
    """A PNG that does not compress (random pixels): about 3 bytes per pixel."""
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(pixels).save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return path


def test_upload_keeps_the_good_files_and_lists_each_refused_one(
    page: Any,  # noqa: F811
    live_server: Any,
    make_user: Any,
    settings: Any,
    tmp_path: Path,
) -> None:
    settings.PORTAL_MAX_UPLOAD_BYTES = 2**20  # 1 MB, so a test file can be over it
    tech = make_user("tech", "technologist")
    specimen = _specimen(tech)
    good = smear_paths(2)
    notes = tmp_path / "notes.jpg"
    notes.write_text("this is not an image")
    big = _noise_png(tmp_path / "big.png", 700)  # about 1.4 MB
    _login(page, live_server.url, "tech")
    page.goto(f"{live_server.url}/upload/?specimen={specimen.pk}")
    assert "at most 1 MB each" in page.inner_text("main")

    # the page names the file over the size limit as soon as it is chosen
    page.set_input_files("input[name=images]", [str(p) for p in [*good, notes, big]])
    check = page.inner_text("#images-check")
    assert "big.png: the file is 1.4 MB, over the size limit of 1 MB; it will not be saved." in check, check
    page.click("#upload-submit")
    page.wait_for_selector("#upload-result")
    assert page.url == f"{live_server.url}/upload/?specimen={specimen.pk}&model=all"
    result = page.inner_text("#upload-result")
    assert "2 images saved" in result and all(p.name in result for p in good)
    refused = page.inner_text("#refused-files")
    assert "2 files not saved" in refused
    assert "notes.jpg: not an image the models can read" in refused
    assert "big.png: the file is 1.4 MB, over the size limit of 1 MB." in refused
    assert page.locator("select[name=specimen]").input_value() == str(specimen.pk)  # ready for the corrected files
    _screenshot(page, "upload-refused")
    assert sorted(Image.objects.values_list("original_name", flat=True)) == sorted(p.name for p in good)
    event = AuditEvent.objects.get(action="image.upload_refused")
    assert [f["name"] for f in event.data["files"]] == ["notes.jpg", "big.png"]
    page.reload()  # the refused list was shown once; a reload uploads nothing again
    assert page.locator("#upload-result").count() == 0 and Image.objects.count() == 2

    # too many files: said on the page, nothing sent
    many = [tmp_path / f"copy{i}.jpg" for i in range(settings.PORTAL_MAX_FILES_PER_UPLOAD + 1)]
    for path in many:
        path.write_bytes(good[0].read_bytes())
    page.set_input_files("input[name=images]", [str(p) for p in many])
    page.click("#upload-submit")
    limit = settings.PORTAL_MAX_FILES_PER_UPLOAD
    assert f"At most {limit} images per upload: you chose {limit + 1}." in page.inner_text("#images-check")
    assert page.url.endswith(f"/upload/?specimen={specimen.pk}&model=all") and "<h1>Upload smear images</h1>" in (
        page.content()
    )
    assert Image.objects.count() == 2
    _screenshot(page, "upload-too-many")


def test_an_image_every_model_refused_says_so_once(
    page: Any,  # noqa: F811
    live_server: Any,
    make_user: Any,
    settings: Any,
) -> None:
    from tests.portal.test_cells import answer

    settings.PORTAL_CELL_MODEL = "wbc_cells"
    tech = make_user("tech", "technologist")
    image = upload_images(tech, _specimen(tech), validated(smear_paths(1)), MODELS)[0]
    refusal = Refusal("not_a_blood_smear", "smear score 0.02 under 0.5")
    for analysis in image.analyses.all():
        store_outcome(analysis.pk, refusal)
    store_cell_outcome(image.cell_analysis.pk, answer([]))  # the cell model found nothing on it
    _login(page, live_server.url, "tech")
    page.goto(f"{live_server.url}/images/{image.pk}/")
    main = page.inner_text("main")
    assert page.locator("#refused").is_visible() and "does not look like a stained peripheral blood smear" in main
    assert main.count("does not look like a stained peripheral blood smear") == 1
    assert "All 4 models refused it: it has no result and no cell count." in main
    assert page.locator("#consensus").count() == 0  # no empty consensus box
    assert page.locator("#cells").count() == 0 and "0 cells found" not in main
    _screenshot(page, "refused-image")


def _fits(page: Any, width: int) -> None:  # noqa: F811
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"{page.url}: the page is {scroll} px wide on a {width} px screen"


def test_narrow_screens_show_the_sign_off_panel_and_the_worklist_consensus(
    page: Any,  # noqa: F811
    live_server: Any,
    make_user: Any,
) -> None:
    tech = make_user("tech", "technologist")
    make_user("rev", "reviewer")
    specimen = _specimen(tech)
    image = _finished_image(tech, specimen)
    _finished_image(tech, specimen, "Pro", index=1)
    width = 400
    page.set_viewport_size({"width": width, "height": 800})
    _login(page, live_server.url, "rev")

    page.goto(f"{live_server.url}/images/{image.pk}/")
    _fits(page, width)
    for selector in ("#consensus", "form#sign-off", "form#sign-off button[data-sign-off]"):
        box = page.locator(selector).first.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (selector, box)
    _screenshot(page, "narrow-image")

    page.goto(f"{live_server.url}/worklist/")
    _fits(page, width)
    consensus = page.locator("#worklist tbody tr").first.locator("td[data-label=Consensus]")
    box = consensus.bounding_box()
    assert consensus.is_visible() and box is not None and box["x"] + box["width"] <= width
    assert consensus.inner_text() == "Early Pre-B ALL (4 of 4)"  # its column's name is drawn before it (CSS)
    _screenshot(page, "narrow-worklist")

    page.goto(f"{live_server.url}/")
    _fits(page, width)
    statuses = page.locator("#recent tbody tr").first.locator("td.statuses").inner_text()
    assert "xception_bigru: done" in statuses and "mobilenetv3_lstm: done" in statuses  # labelled, not "done done"
    _screenshot(page, "narrow-dashboard")


def test_skip_link_and_the_api_docs_way_back(page: Any, live_server: Any, make_user: Any) -> None:  # noqa: F811
    make_user("tech", "technologist")
    _login(page, live_server.url, "tech")
    page.goto(f"{live_server.url}/about/")
    skip = page.locator("a.skip-link")
    assert not skip.is_visible() or skip.bounding_box()["x"] < 0  # type: ignore[index]
    page.keyboard.press("Tab")  # the first stop on every page
    assert page.evaluate("document.activeElement.className") == "skip-link"
    box = skip.bounding_box()
    assert box is not None and box["x"] >= 0
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "content"

    page.goto(f"{live_server.url}/api/docs/")
    back = page.locator("#portal-back a", has_text="Back to the portal")
    assert back.is_visible()
    back.click()
    page.wait_for_selector("h1:has-text('Dashboard')")
    assert page.outside_requests == []  # type: ignore[attr-defined]
