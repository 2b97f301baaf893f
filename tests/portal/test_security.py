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
        assert client.post("/api/auth/token/", {"username": "rev", "password": "wrong"}).status_code in (400, 403, 429)
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
