"""Account security: lockout after repeated failed logins (web form and API token), audited; idle timeout."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.test import Client

from portal.audit.models import AuditEvent
from tests.portal.conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def lockout(settings: Any) -> None:
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 3


def test_repeated_failed_logins_lock_the_account_on_the_web_form(lockout: None, technologist: Any) -> None:
    client = Client()
    for _ in range(3):
        page = client.post("/accounts/login/", {"username": "tech", "password": "wrong-password"})
        assert page.status_code in (200, 429)
    locked = client.post("/accounts/login/", {"username": "tech", "password": PASSWORD})  # even the right one
    assert locked.status_code == 429 and "Too many failed logins" in locked.content.decode()
    assert "_auth_user_id" not in client.session
    events = AuditEvent.objects.filter(action="user.locked_out")
    assert events.exists() and {e.data["username"] for e in events} == {"tech"}
    assert AuditEvent.objects.filter(action="user.login_failed").count() >= 3


def test_repeated_failed_logins_lock_the_api_token_endpoint(lockout: None, reviewer: Any) -> None:
    client = Client()
    for _ in range(3):
        assert client.post("/api/auth/token/", {"username": "rev", "password": "wrong"}).status_code in (401, 403, 429)
    response = client.post("/api/auth/token/", {"username": "rev", "password": PASSWORD})
    assert response.status_code == 429 and response.json()["code"] == "locked_out"
    assert AuditEvent.objects.filter(action="user.locked_out").exists()


def test_a_successful_login_before_the_limit_resets_the_count(lockout: None, technologist: Any) -> None:
    client = Client()
    for _ in range(2):
        client.post("/accounts/login/", {"username": "tech", "password": "wrong-password"})
    assert client.post("/accounts/login/", {"username": "tech", "password": PASSWORD}).status_code == 302
    client.post("/accounts/logout/")
    for _ in range(2):
        client.post("/accounts/login/", {"username": "tech", "password": "wrong-password"})
    assert client.post("/accounts/login/", {"username": "tech", "password": PASSWORD}).status_code == 302


def test_an_idle_session_ends(settings: Any, technologist: Any) -> None:
    settings.SESSION_COOKIE_AGE = 1
    client = Client()
    assert client.post("/accounts/login/", {"username": "tech", "password": PASSWORD}).status_code == 302
    assert client.get("/").status_code == 200
    time.sleep(2.1)
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_users_requests_renew_the_session_but_polling_does_not(settings: Any, technologist: Any) -> None:
    from portal.accounts.middleware import POLL_HEADER

    settings.SESSION_COOKIE_AGE = 2
    settings.PORTAL_SESSION_RENEW_S = 0
    client = Client()
    assert client.post("/accounts/login/", {"username": "tech", "password": PASSWORD}).status_code == 302
    for _ in range(3):  # 3 x 1.2 s of the user's own requests: longer than the timeout, still logged in
        time.sleep(1.2)
        assert client.get("/").status_code == 200
    poll = {"headers": {POLL_HEADER: "1", "Accept": "application/json"}}
    for _ in range(3):  # only the page's polling for 2.4 s: the session ends
        time.sleep(0.8)
        client.get("/", **poll)
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_session_row_is_written_at_most_once_per_renewal_interval(settings: Any, technologist: Any) -> None:
    from django.contrib.sessions.models import Session

    settings.PORTAL_SESSION_RENEW_S = 60
    client = Client()
    assert client.post("/accounts/login/", {"username": "tech", "password": PASSWORD}).status_code == 302
    client.get("/")
    expiry = Session.objects.get().expire_date
    time.sleep(1.1)
    for _ in range(3):  # images, heatmaps, pages within a minute: no further session writes
        assert client.get("/").status_code == 200
    assert Session.objects.get().expire_date == expiry
