"""End to end in real headless Chromium against a live portal and a real TorchServe.

Log in, create a patient and a specimen, upload two real smear images with all four models, see
the results (probabilities and heatmaps), sign off as a reviewer, and find every step in the audit
log. The result page's screenshot goes to test-artifacts/portal-result.png.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portal.analyses.models import Analysis, ImageReview
from portal.audit.models import AuditEvent
from tests.conftest import REPO
from tests.portal.conftest import PASSWORD, otp_code, otp_device, smear_paths

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(30_000)
        # No request may leave the machine (no CDN): record any non-local URL.
        outside: list[str] = []
        page.on(
            "request",
            lambda r: (
                outside.append(r.url)
                if not r.url.startswith(("http://localhost", "http://127.0.0.1", "data:"))
                else None
            ),
        )
        page.outside_requests = outside  # type: ignore[attr-defined]
        # Every failed answer the page got (status and URL), to say why an image did not load.
        failed: list[str] = []
        page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.on("requestfailed", lambda r: failed.append(f"failed {r.url}: {r.failure}"))
        page.failed_responses = failed  # type: ignore[attr-defined]
        yield page
        context.close()
        browser.close()


def _run_jobs_until_idle() -> None:
    """A job worker in a thread (the live server's database is committed, so it sees the uploads)."""
    from django.db import connections

    from portal import jobs

    try:
        jobs.run_queued(idle_s=3.0)
    finally:
        connections.close_all()


def _login(page: Any, base: str, username: str) -> None:
    """Log in through the form; a reviewer or admin then gives the code of an enrolled app."""
    from django.contrib.auth import get_user_model

    from portal.accounts.second_factor import needs_second_factor

    user = get_user_model().objects.get(username=username)
    device = otp_device(user) if needs_second_factor(user) else None
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    if device is not None:
        page.wait_for_selector("input[name=otp_token]")
        page.fill("input[name=otp_token]", otp_code(device))
        page.click("main button[type=submit]")  # the header's first button is Log out
        page.wait_for_url(lambda url: "/accounts/otp/" not in url)
    page.wait_for_selector("header.top .who")


def test_technologist_uploads_reviewer_signs_off(
    page: Any, live_server: Any, use_torchserve: Any, settings: Any, make_user: Any
) -> None:
    make_user("tech", "technologist")
    otp_device(make_user("rev", "reviewer"))  # enrolled now: no write from this thread while jobs run
    base = live_server.url

    # Technologist: log in, create the patient and a specimen.
    _login(page, base, "tech")
    page.click("text=Patients")
    page.click("text=New patient")
    page.fill("input[name=mrn]", "E2E-0001")
    page.fill("input[name=name]", "Rosalind Franklin")
    page.fill("input[name=date_of_birth]", "1980-07-25")
    page.select_option("select[name=sex]", "F")
    page.click("button:has-text('Save')")
    page.wait_for_selector("h1:has-text('Rosalind Franklin')")
    page.click("text=New specimen")
    page.fill("input[name=accession]", "E2E-ACC-1")
    page.fill("input[name=collected_by]", "haematology ward")
    page.click("button:has-text('Save')")
    page.wait_for_selector("h1:has-text('Specimen E2E-ACC-1')")

    # Upload two real smear images with all four models.
    page.click("text=Upload images")
    images = smear_paths(2)
    page.set_input_files("input[name=images]", [str(p) for p in images])
    page.select_option("select[name=model]", "all")
    page.click("#upload-submit")
    page.wait_for_selector("h2:has-text('Images')")
    # Nothing has run yet: the specimen page says so and follows the jobs by itself.
    assert page.locator("#progress").is_visible() and "queued" in page.inner_text("table.list")
    page.click(f"text={images[0].name}")
    page.wait_for_selector("h1:has-text('Results')")
    assert page.locator("[data-analysis-progress]").count() == 4
    assert "Queued since" in page.inner_text("section.card")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "portal-queued.png"), full_page=True)
    # A job worker starts: the page shows the results when they are in, without a reload by hand.
    worker = threading.Thread(target=_run_jobs_until_idle, daemon=True)
    worker.start()
    page.wait_for_selector("section.card[data-status=done] >> nth=3", timeout=300_000)
    worker.join(timeout=300)
    cards = page.locator("section.card")
    assert cards.count() == 4
    assert page.locator("section.card[data-status=done]").count() == 4, page.content()
    assert page.locator("svg.probs").count() == 4
    assert page.locator("svg.probs rect.bar").count() == 16
    heatmaps = page.locator("img.heatmap")
    assert heatmaps.count() == 4
    # the page inserts them live: wait (up to 30 s) until every one has loaded, then check each
    page.wait_for_function("[...document.querySelectorAll('img.heatmap')].every(i => i.complete && i.naturalWidth > 0)")
    for i in range(4):
        assert heatmaps.nth(i).evaluate("img => img.complete && img.naturalWidth > 0"), page.failed_responses  # type: ignore[attr-defined]
    assert page.locator("figure.original img").evaluate("img => img.naturalWidth") > 0, page.failed_responses  # type: ignore[attr-defined]
    assert page.locator("#consensus").is_visible()
    assert "Decision support only" in page.inner_text("p.disclaimer.banner")
    assert page.locator("#awaiting").inner_text() == "Awaiting sign-off by a reviewer."  # no form for a technologist
    assert page.locator("form#sign-off").count() == 0
    page.screenshot(path=str(ARTIFACTS / "portal-result.png"), full_page=True)
    result_url = page.url
    page.click("button:has-text('Log out')")
    page.wait_for_selector("h1:has-text('Log in')")

    # Reviewer: from the dashboard to the worklist (oldest first), one decision per image.
    _login(page, base, "rev")
    page.click("p.counts a[href='/worklist/']")
    page.wait_for_selector("h1:has-text('Awaiting sign-off')")
    rows = page.locator("#worklist tbody tr")
    assert rows.count() == 2 and images[0].name in rows.nth(0).inner_text()
    page.screenshot(path=str(ARTIFACTS / "portal-worklist.png"), full_page=True)
    rows.nth(0).locator(f"text={images[0].name}").click()
    page.wait_for_selector("#sign-off")
    assert page.url == result_url and page.locator("form#sign-off").count() == 1  # one form, not one per model
    assert page.locator("section.card form").count() == 0  # the four models are evidence beside it
    form = page.locator("form#sign-off")
    form.locator("input[name=decision][value=reclassify]").check()
    form.locator("select[name=final_label]").select_option("Pre")
    form.locator("textarea[name=comment]").fill("blasts with fine chromatin; Pre-B")
    page.screenshot(path=str(ARTIFACTS / "portal-sign-off.png"), full_page=True)
    next_button = form.locator("button:has-text('and open the next image')")
    # the button says what will be recorded: a reclassification of the consensus, or the reviewer's own
    # label where the models reached none (the consensus refers: no majority, a model out of distribution)
    referred = page.locator("#consensus-label").inner_text().startswith("Refer for manual review")
    how = "your label: the models reached no consensus" if referred else "reclassified"
    assert next_button.inner_text() == f"Sign off as Pre-B ALL ({how}) and open the next image"
    next_button.click()
    # the next image of the worklist opens; its decision: agree when the models agree, else set the label
    page.wait_for_url(lambda url: url != result_url and "/images/" in url)
    form = page.locator("form#sign-off")
    if form.locator("input[name=decision][value=agree]").count():
        form.locator("input[name=decision][value=agree]").check()
    else:
        form.locator("select[name=final_label]").select_option("Benign")
        form.locator("textarea[name=comment]").fill("no consensus; normal lymphocytes at the microscope")
    assert form.locator("button[data-sign-off]").first.inner_text().startswith("Sign off as ")
    form.locator("button[data-sign-off]").first.click()
    page.wait_for_selector("#final-label")
    page.goto(result_url)
    final = page.locator("#final-label")
    assert "Pre" in final.locator(".final-label").inner_text() and "rev" in final.inner_text()
    page.screenshot(path=str(ARTIFACTS / "portal-signed.png"), full_page=True)
    page.goto(f"{base}/worklist/")
    assert "Nothing is waiting for sign-off" in page.inner_text("#worklist")

    reviews = {r.image.original_name: r for r in ImageReview.objects.select_related("image")}
    assert set(reviews) == {p.name for p in images}
    first_review = reviews[images[0].name]
    assert (first_review.final_label, first_review.decision, first_review.reviewer_name) == ("Pre", "reclassify", "rev")
    assert set(first_review.evidence) == set(settings.PORTAL_MODELS)
    assert Analysis.objects.filter(status="done").count() == 8
    events = set(AuditEvent.objects.values_list("actor_username", "action"))
    for expected in [
        ("tech", "user.login"),
        ("tech", "patient.create"),
        ("tech", "specimen.create"),
        ("tech", "image.upload"),
        ("tech", "image.view"),
        ("tech", "user.logout"),
        ("rev", "user.login"),
        ("rev", "image.view"),
        ("rev", "analysis.worklist"),
        ("rev", "image.sign_off"),
    ]:
        assert expected in events, expected
    assert AuditEvent.objects.filter(action="analysis.complete").count() == 8
    assert page.outside_requests == []  # type: ignore[attr-defined]
    assert Path(ARTIFACTS / "portal-result.png").stat().st_size > 10_000
