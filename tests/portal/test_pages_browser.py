"""The pages a user meets when something is refused, in real headless Chromium: styled error pages
(403, 404, 503 with the database down), the lockout after repeated failed logins, and the second-factor
page. Screenshots go to test-artifacts/."""

from __future__ import annotations

from typing import Any

import pytest

from portal.audit.models import AuditEvent
from tests.portal.conftest import PASSWORD
from tests.portal.test_e2e_browser import ARTIFACTS, _login, page  # noqa: F401 (the page fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _styled(page: Any) -> None:  # noqa: F811
    """The portal's own look: its stylesheet applied and its header, not a bare browser page."""
    assert page.locator("header.top .brand").is_visible()
    background = page.evaluate("getComputedStyle(document.querySelector('header.top')).backgroundColor")
    assert background not in ("rgba(0, 0, 0, 0)", "transparent"), background


def test_error_pages_are_styled_and_explain(page: Any, live_server: Any, make_user: Any) -> None:  # noqa: F811
    make_user("tech", "technologist")
    base = live_server.url
    ARTIFACTS.mkdir(exist_ok=True)
    # anonymous: the API docs ask for the login page, not a bare 401
    page.goto(f"{base}/api/docs/")
    assert "/accounts/login/" in page.url and page.locator("h1:has-text('Log in')").is_visible()
    _login(page, base, "tech")
    # 403: a technologist opens the reviewers' worklist
    response = page.goto(f"{base}/worklist/")
    assert response is not None and response.status == 403
    assert page.locator("h1:has-text('Not allowed')").is_visible() and "Ask an administrator" in page.content()
    _styled(page)
    page.screenshot(path=str(ARTIFACTS / "portal-403.png"), full_page=True)
    assert AuditEvent.objects.filter(action="access.denied", actor_username="tech").exists()
    # 404
    response = page.goto(f"{base}/images/999999/")
    assert response is not None and response.status == 404
    _styled(page)
    page.screenshot(path=str(ARTIFACTS / "portal-404.png"), full_page=True)


def test_database_down_page_is_styled_and_says_retry(
    page: Any,  # noqa: F811
    live_server: Any,
    make_user: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.db import OperationalError

    from portal.analyses import views

    make_user("tech", "technologist")
    _login(page, live_server.url, "tech")

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("(2006, 'MySQL server has gone away')")

    monkeypatch.setattr(views, "render", unreachable)  # the page fails as it would with the database server down
    response = page.goto(f"{live_server.url}/about/")
    assert response is not None and response.status == 503 and response.headers["retry-after"]
    assert "nothing was saved" in page.inner_text("main")
    _styled(page)
    page.screenshot(path=str(ARTIFACTS / "portal-503.png"), full_page=True)


def test_lockout_after_repeated_failed_logins(page: Any, live_server: Any, make_user: Any, settings: Any) -> None:  # noqa: F811
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 3
    make_user("tech", "technologist")
    base = live_server.url
    for _ in range(3):
        page.goto(f"{base}/accounts/login/")
        page.fill("input[name=username]", "tech")
        page.fill("input[name=password]", "not-the-password")
        page.click("button[type=submit]")
    assert page.locator("text=locked").first.is_visible(), page.content()
    assert "locked on this computer for 15 minutes" in page.inner_text("main")  # words, not an ISO duration
    _styled(page)
    page.screenshot(path=str(ARTIFACTS / "portal-locked-out.png"), full_page=True)
    # the right password does not help while locked
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", "tech")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    assert page.locator("text=locked").first.is_visible() and not page.locator("header.top .who").count()
    assert AuditEvent.objects.filter(action="user.locked_out").exists()
