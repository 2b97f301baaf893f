"""The update loop's pages in real headless Chromium: the dashboard's drift line leads to the drift watch (its control
charts drawn), and the Models page shows a promoted version with its gate report. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from portal.actions.uploads import upload_images
from serving.versions import VERSIONS_ENV, Versions
from tests.portal.conftest import smear_paths, validated
from tests.portal.helpers import complete
from tests.portal.test_e2e_browser import ARTIFACTS, _login, page  # noqa: F401 (the page fixture)
from tests.portal.test_model_loop import MODEL, _candidate

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_drift_line_drift_page_and_models_page(
    page: Any,  # noqa: F811
    live_server: Any,
    make_user: Any,
    specimen: Any,
    technologist: Any,
    admin_user: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    monkeypatch.setenv(VERSIONS_ENV, str(tmp_path / "model_versions"))
    settings.TORCHSERVE_WORKDIR = str(tmp_path / "no-torchserve")
    versions = Versions.of(MODEL)
    versions.root.mkdir(parents=True)
    _candidate(versions, "9.3", passed=True)
    actions_done = upload_images(technologist, specimen, validated(smear_paths(24)), [MODEL])
    shipped = versions.base_version()
    for image in actions_done:  # a week where every answer is referred: far above the card's abstention rate
        a = complete(image.analyses.get(), "Pre", abstained=True)
        a.model_version = shipped
        a.save()
    from django.core.management import call_command

    call_command("promote_model", model=MODEL, model_version="9.3", by=admin_user.username)
    base = live_server.url
    ARTIFACTS.mkdir(exist_ok=True)
    _login(page, base, "tech")
    alert = page.locator("p[role=alert]:has-text('Drift:')")
    assert alert.is_visible() and MODEL in alert.inner_text() and "abstention" in alert.inner_text()
    alert.locator("a").click()
    page.wait_for_url(f"{base}/models/drift/")
    charts = page.locator(f"#drift-{MODEL} svg")
    assert charts.count() == 4 and charts.first.is_visible()
    assert page.locator(f"#drift-{MODEL} circle[fill='#c00']").count() >= 1  # the week out of its limits, in red
    page.screenshot(path=str(ARTIFACTS / "portal-drift.png"), full_page=True)
    page.click("nav a:has-text('Models')")
    page.wait_for_url(f"{base}/models/")
    section = page.locator(f"#model-{MODEL}")
    assert section.locator(".default-version").inner_text() == "9.3"
    assert "passed" in section.inner_text() and "gate-9.3.json" in section.inner_text()
    assert f"rollback returns to {shipped}" in section.inner_text()
    page.screenshot(path=str(ARTIFACTS / "portal-models.png"), full_page=True)
    assert json.loads((versions.root / "promotions.json").read_text())["default"] == "9.3"
