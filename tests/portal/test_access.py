"""Login everywhere, CSRF, roles, and no data leaks through object IDs."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from tests.portal.conftest import login

pytestmark = pytest.mark.django_db

# The only views an anonymous user may reach: logging in (web, admin, API token) and registering.
# probes and the icon: no data
PUBLIC = {"accounts:login", "accounts:register", "admin:login", "api:token", "healthz", "readyz", "favicon"}


def _walk(patterns: list[Any], prefix: str = "", namespace: str = "") -> list[tuple[str, str]]:
    out = []
    for p in patterns:
        if isinstance(p, URLResolver):
            ns = f"{namespace}{p.namespace}:" if p.namespace else namespace
            out += _walk(p.url_patterns, prefix + str(p.pattern), ns)
        elif isinstance(p, URLPattern):
            out.append((prefix + str(p.pattern), f"{namespace}{p.name}" if p.name else ""))
    return out


def _concrete(pattern: str) -> str:
    """Fill every converter/group with a plausible value: an ID or a format suffix."""
    path = pattern.replace("^", "").replace("$", "").replace("\\.", ".").replace("/?", "/")
    path = re.sub(r"\(\?P<format>[^)]*\)", "json", path)
    path = re.sub(r"\(\?P<\w+>[^)]*\)", "1", path)
    path = re.sub(r"<drf_format_suffix:format>", ".json", path)
    path = re.sub(r"<(?:int|path|str):\w+>|<\w+>", "1", path)
    return "/" + path


def test_every_url_except_login_and_registration_requires_login(patient: Any) -> None:
    client = Client()
    checked = 0
    for pattern, name in _walk(get_resolver().url_patterns):
        if name in PUBLIC:
            continue
        url = _concrete(pattern)
        response = client.get(url)
        if name == "api:docs":  # a page for people: to the login page
            assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url
        elif url.startswith("/api/"):
            assert response.status_code in (401, 403), (url, response.status_code)
        elif url.startswith("/admin/"):
            assert response.status_code == 302, (url, response.status_code)
            assert response["Location"].startswith(("/admin/login/", "/accounts/login/")), (url, response["Location"])
        else:
            assert response.status_code == 302, (url, response.status_code)
            assert response["Location"].startswith("/accounts/login/"), (url, response["Location"])
        checked += 1
    assert checked > 50


def test_public_pages_open_without_login() -> None:
    client = Client()
    for url in ["/accounts/login/", "/accounts/register/", "/admin/login/"]:
        assert client.get(url).status_code == 200, url
    assert client.post("/api/auth/token/", {"username": "nobody", "password": "x"}).status_code == 401


def test_csrf_is_enforced_on_forms(technologist: Any) -> None:
    client = login(technologist, enforce_csrf_checks=True)
    data = {"mrn": "CSRF1", "name": "No Token", "date_of_birth": "2000-01-01", "sex": "U"}
    assert client.post("/patients/new/", data).status_code == 403
    page = client.get("/patients/new/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    assert client.post("/patients/new/", {**data, "csrfmiddlewaretoken": token}).status_code == 302


def test_csrf_is_enforced_on_login() -> None:
    client = Client(enforce_csrf_checks=True)
    assert client.post("/accounts/login/", {"username": "a", "password": "b"}).status_code == 403


def test_csrf_is_enforced_on_api_with_session_auth(technologist: Any) -> None:
    client = login(technologist, enforce_csrf_checks=True)
    response = client.post("/api/patients/", {"mrn": "X1", "name": "N", "date_of_birth": "2000-01-01"})
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


def test_technologist_cannot_open_admin(tech_client: Client) -> None:
    response = tech_client.get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert tech_client.get("/admin/auth/user/").status_code == 302


def test_user_without_role_sees_no_patient_data(norole: Any, patient: Any, specimen: Any) -> None:
    client = login(norole)
    existing, missing = patient.pk, 999999
    for url in [
        "/patients/{}/",
        "/patients/specimens/{}/",
        "/images/{}/",
        "/images/{}/file/",
        "/analyses/{}/",
        "/specimens/{}/report/",
        "/patients/{}/edit/",
    ]:
        a = client.get(url.format(existing))
        b = client.get(url.format(missing))
        # The same answer for an existing and a missing ID: no existence oracle, no data.
        assert a.status_code == b.status_code == 403, url
        assert patient.name.encode() not in a.content
    assert client.get("/patients/").status_code == 403
    assert client.get("/patients/?q=Ada").status_code == 403
    for url in [
        f"/api/patients/{existing}/",
        f"/api/patients/{missing}/",
        "/api/patients/",
        "/api/specimens/",
        "/api/analyses/",
        "/api/reviews/",
    ]:
        response = client.get(url)
        assert response.status_code == 403, url
        assert patient.name.encode() not in response.content


def test_technologist_cannot_export(tech_client: Client, specimen: Any) -> None:
    assert tech_client.get("/exports/?start=2020-01-01&end=2030-01-01").status_code == 403
    assert tech_client.get(f"/specimens/{specimen.pk}/report.pdf").status_code == 403
