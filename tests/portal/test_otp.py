"""The TOTP second factor (issue #12 item 5): reviewers, admins and superusers give a code after the
password, on the web and at the API token endpoint; technologists do not. Codes are computed the way
an authenticator app does (django_otp.oath.totp on the device key). PORTAL_OTP_REQUIRED stays on in
every portal test (the production default); tests/portal/conftest.login() gives the code for its users.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from portal.accounts.second_factor import needs_second_factor, secret_base32
from portal.audit.models import AuditEvent
from tests.conftest import REPO
from tests.portal.conftest import PASSWORD, login, otp_code, otp_device
from tests.portal.test_e2e_browser import ARTIFACTS, page  # noqa: F401 (the page fixture)

pytestmark = pytest.mark.django_db


def _password_only(user: Any) -> Client:
    client = Client()
    response = client.post("/accounts/login/", {"username": user.username, "password": PASSWORD})
    assert response.status_code == 302, response.content.decode()[:500]
    return client


def _unthrottle(device: TOTPDevice) -> None:
    """Let the throttling delay pass (django-otp: 2**(n-1) s after n wrong codes) without sleeping."""
    device.refresh_from_db()
    device.throttling_failure_timestamp -= timedelta(minutes=10)
    device.save()


def test_who_needs_a_second_factor(make_user: Any, django_user_model: Any, technologist: Any, reviewer: Any) -> None:
    assert needs_second_factor(reviewer) and needs_second_factor(make_user("adm", "admin"))
    assert needs_second_factor(django_user_model.objects.create_superuser("root", "r@example.org", PASSWORD))
    assert not needs_second_factor(technologist) and not needs_second_factor(make_user("nobody"))


def test_technologist_is_not_asked_for_a_code(technologist: Any) -> None:
    client = _password_only(technologist)
    assert client.get("/").status_code == 200
    assert not TOTPDevice.objects.filter(user=technologist).exists()


def test_reviewer_without_device_is_sent_to_enrolment_and_enrols(reviewer: Any) -> None:
    client = _password_only(reviewer)
    first = client.get("/worklist/")
    assert first.status_code == 302 and first["Location"].startswith("/accounts/otp/setup/")
    assert "next=%2Fworklist%2F" in first["Location"]
    # every other page is closed too, the API on this session as well
    assert client.get("/patients/")["Location"].startswith("/accounts/otp/setup/")
    api = client.get("/api/patients/")
    assert api.status_code == 403 and api.json()["code"] == "otp_required"

    html = client.get(first["Location"]).content.decode()
    device = TOTPDevice.objects.get(user=reviewer)
    assert not device.confirmed
    assert "otpauth://totp/" in html and "<svg" in html and "secret=" in html
    assert secret_base32(device) in html  # for typing in by hand

    done = client.post("/accounts/otp/setup/", {"otp_token": otp_code(device), "next": "/worklist/"})
    assert done.status_code == 302 and done["Location"] == "/worklist/"
    device.refresh_from_db()
    assert device.confirmed
    assert client.get("/worklist/").status_code == 200
    assert client.get("/api/patients/").status_code == 200
    assert AuditEvent.objects.filter(action="user.otp_enrolled", actor=reviewer).exists()
    # enrolled: the setup page no longer shows a secret (a stolen password cannot enrol another phone)
    again = _password_only(reviewer).get("/accounts/otp/setup/")
    assert again.status_code == 302 and again["Location"].startswith("/accounts/otp/verify/")


def test_wrong_enrolment_code_is_refused_audited_and_throttled(reviewer: Any) -> None:
    client = _password_only(reviewer)
    client.get("/accounts/otp/setup/")
    device = TOTPDevice.objects.get(user=reviewer)
    right = otp_code(device)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    refused = client.post("/accounts/otp/setup/", {"otp_token": wrong})
    assert refused.status_code == 200 and "not right" in refused.content.decode()
    assert AuditEvent.objects.filter(action="user.otp_failed", actor=reviewer, data__stage="enrolment").exists()
    # straight after a wrong code even the right one is refused (django-otp throttling), and audited
    throttled = client.post("/accounts/otp/setup/", {"otp_token": right})
    assert throttled.status_code == 200 and "Too many wrong codes" in throttled.content.decode()
    assert AuditEvent.objects.filter(action="user.otp_throttled", actor=reviewer).exists()
    device.refresh_from_db()
    assert not device.confirmed
    assert client.get("/").status_code == 302


def test_login_with_an_enrolled_app_asks_for_the_code(reviewer: Any) -> None:
    device = otp_device(reviewer)
    client = _password_only(reviewer)
    sent = client.get("/")
    assert sent.status_code == 302 and sent["Location"].startswith("/accounts/otp/verify/")
    right = otp_code(device)
    for wrong in ("000000" if right != "000000" else "111111", "12ab56"):
        assert client.post("/accounts/otp/verify/", {"otp_token": wrong}).status_code == 200
    assert AuditEvent.objects.filter(action="user.otp_failed", actor=reviewer, data__stage="login").count() == 1
    assert client.get("/").status_code == 302
    _unthrottle(device)
    ok = client.post("/accounts/otp/verify/", {"otp_token": right, "next": "https://evil.example/"})
    assert ok.status_code == 302 and ok["Location"] == "/"  # no open redirect
    assert client.get("/").status_code == 200
    assert AuditEvent.objects.filter(action="user.otp_verified", actor=reviewer).exists()
    # the same code is not accepted twice (a second session in the same 30 s step)
    other = _password_only(reviewer)
    assert other.post("/accounts/otp/verify/", {"otp_token": right}).status_code == 200
    assert other.get("/").status_code == 302


def test_admin_role_and_django_admin_need_the_code(make_user: Any) -> None:
    admin = make_user("adm", "admin", is_staff=True)
    client = _password_only(admin)
    assert client.get("/admin/")["Location"].startswith("/accounts/otp/setup/")
    assert client.get("/audit/")["Location"].startswith("/accounts/otp/setup/")
    assert login(admin).get("/audit/").status_code == 200


def test_api_token_needs_the_code_for_reviewers(reviewer: Any, technologist: Any) -> None:
    api = APIClient()
    assert api.post("/api/auth/token/", {"username": "tech", "password": PASSWORD}).status_code == 200

    not_enrolled = api.post("/api/auth/token/", {"username": "rev", "password": PASSWORD})
    assert not_enrolled.status_code == 403 and not_enrolled.json()["code"] == "otp_not_enrolled"

    device = otp_device(reviewer)
    missing = api.post("/api/auth/token/", {"username": "rev", "password": PASSWORD})
    assert missing.status_code == 400 and "otp" in missing.json()
    right = otp_code(device)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    refused = api.post("/api/auth/token/", {"username": "rev", "password": PASSWORD, "otp": wrong})
    assert refused.status_code == 400 and "otp" in refused.json()
    assert AuditEvent.objects.filter(action="user.otp_failed", actor=reviewer, data__stage="api_token").exists()
    throttled = api.post("/api/auth/token/", {"username": "rev", "password": PASSWORD, "otp": right})
    assert throttled.status_code == 429 and throttled.json()["code"] == "otp_throttled"
    assert not AuditEvent.objects.filter(action="api.token", actor=reviewer).exists()

    _unthrottle(device)
    issued = api.post("/api/auth/token/", {"username": "rev", "password": PASSWORD, "otp": right})
    assert issued.status_code == 200
    assert AuditEvent.objects.filter(action="api.token", actor=reviewer).exists()
    token_client = APIClient()
    token_client.credentials(HTTP_AUTHORIZATION=f"Token {issued.json()['token']}")
    assert token_client.get("/api/patients/").status_code == 200


def test_the_requirement_cannot_be_turned_off_in_production() -> None:
    env = dict(os.environ, PORTAL_OTP_REQUIRED="0", DJANGO_DEBUG="0", DJANGO_SETTINGS_MODULE="portal.config.settings")
    code = "import django; django.setup()"
    off = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert off.returncode != 0 and "PORTAL_OTP_REQUIRED" in off.stderr
    dev = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=dict(env, DJANGO_DEBUG="1"), capture_output=True, text=True
    )
    assert dev.returncode == 0, dev.stderr


def test_a_development_setting_turns_it_off(settings: Any, reviewer: Any) -> None:
    settings.PORTAL_OTP_REQUIRED = False
    assert _password_only(reviewer).get("/").status_code == 200


def test_an_operator_enrols_from_the_shell_and_the_key_gives_api_codes(reviewer: Any) -> None:
    import json
    from io import StringIO

    from django.core.management import CommandError, call_command

    out = StringIO()
    call_command("otp_enrol", "rev", "--json", stdout=out)
    printed = json.loads(out.getvalue())
    device = TOTPDevice.objects.get(user=reviewer)
    assert device.confirmed and printed["key"] == device.key and printed["uri"].startswith("otpauth://totp/")
    assert AuditEvent.objects.filter(action="user.otp_enrolled", data__stage="manage.py otp_enrol").exists()
    with pytest.raises(CommandError):
        call_command("otp_enrol", "rev", stdout=StringIO())  # no silent replacement
    call_command("otp_enrol", "rev", "--replace", stdout=StringIO())  # a lost phone
    replaced = TOTPDevice.objects.get(user=reviewer)
    assert replaced.pk != device.pk
    issued = APIClient().post("/api/auth/token/", {"username": "rev", "password": PASSWORD, "otp": otp_code(replaced)})
    assert issued.status_code == 200


def test_an_admin_removes_a_lost_app_and_the_user_enrols_again(make_user: Any, reviewer: Any) -> None:
    device = otp_device(reviewer)
    admin = login(make_user("adm", "admin", is_staff=True))
    assert admin.get("/admin/otp_totp/totpdevice/").status_code == 200
    assert admin.get(f"/admin/otp_totp/totpdevice/{device.pk}/qrcode/").status_code == 403  # no secrets shown
    assert admin.post(f"/admin/otp_totp/totpdevice/{device.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not TOTPDevice.objects.filter(user=reviewer).exists()
    assert AuditEvent.objects.filter(action="user.otp_removed", object_id=str(reviewer.pk)).exists()
    assert _password_only(reviewer).get("/")["Location"].startswith("/accounts/otp/setup/")


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_browser_reviewer_enrols_then_gives_codes(
    page: Any,  # noqa: F811
    live_server: Any,
    make_user: Any,
) -> None:
    """Headless Chromium: password, the enrolment page with its QR code, the first code, the dashboard."""
    reviewer = make_user("rev", "reviewer")
    base = live_server.url
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", "rev")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Set up your second factor')")
    assert page.locator(".otp-qr svg").count() == 1
    page.screenshot(path=str(ARTIFACTS / "portal-otp-setup.png"), full_page=True)
    device = TOTPDevice.objects.get(user=reviewer)
    page.fill("input[name=otp_token]", otp_code(device))
    page.click("main button[type=submit]")  # the header's first button is Log out
    page.wait_for_selector("text=Authenticator app enrolled")
    assert "/accounts/otp/" not in page.url
    page.wait_for_selector("header.top .who")
