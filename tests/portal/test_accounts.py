"""Accounts: self-registration (inactive until approved), roles as groups, password change, demo admin."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client

from portal.accounts.roles import ROLE_PERMISSIONS
from portal.audit.models import AuditEvent
from tests.portal.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_registration_creates_inactive_account_until_approved() -> None:
    client = Client()
    data = {
        "username": "newtech",
        "first_name": "New",
        "last_name": "Tech",
        "email": "n@lab.example",
        "password1": "a-long-passphrase-42",
        "password2": "a-long-passphrase-42",
    }
    response = client.post("/accounts/register/", data)
    assert response.status_code == 302
    user = get_user_model().objects.get(username="newtech")
    assert not user.is_active and not user.groups.exists() and not user.is_staff
    assert AuditEvent.objects.filter(action="user.register", actor=user).exists()
    assert not client.login(username="newtech", password="a-long-passphrase-42")
    user.is_active = True  # what the admin does in Django admin
    user.save()
    assert client.login(username="newtech", password="a-long-passphrase-42")


def test_weak_password_is_refused() -> None:
    data = {
        "username": "weak",
        "first_name": "W",
        "last_name": "K",
        "email": "w@lab.example",
        "password1": "12345678",
        "password2": "12345678",
    }
    response = Client().post("/accounts/register/", data)
    assert response.status_code == 200 and not get_user_model().objects.filter(username="weak").exists()


def test_roles_exist_with_their_permissions() -> None:
    for role, perms in ROLE_PERMISSIONS.items():
        group = Group.objects.get(name=role)
        have = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}
        assert have == set(perms), role
    assert "analyses.sign_off_analysis" not in ROLE_PERMISSIONS["technologist"]
    assert "analyses.sign_off_analysis" in ROLE_PERMISSIONS["reviewer"]


def test_password_change_is_audited(tech_client: Client, technologist: Any) -> None:
    response = tech_client.post(
        "/accounts/password/",
        {"old_password": PASSWORD, "new_password1": "another-long-pass-77", "new_password2": "another-long-pass-77"},
    )
    assert response.status_code == 302
    technologist.refresh_from_db()
    assert technologist.check_password("another-long-pass-77")
    assert AuditEvent.objects.filter(action="user.password_change", actor=technologist).exists()
    assert tech_client.get("/").status_code == 200  # session kept


def test_demo_admin_is_created_once(tmp_path: Path) -> None:
    out = StringIO()
    secret = tmp_path / "pw.txt"
    call_command("ensure_demo_admin", password_file=str(secret), stdout=out)
    password = secret.read_text().strip()
    assert password in out.getvalue()
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.groups.filter(name="admin").exists() and admin.check_password(password)
    out = StringIO()
    call_command("ensure_demo_admin", password_file=str(secret), stdout=out)
    assert "password in" in out.getvalue() and get_user_model().objects.count() == 1


def test_roles_are_restored_by_post_migrate_after_a_flush() -> None:
    from django.apps import apps

    from portal.accounts.roles import sync_roles

    Group.objects.filter(name="reviewer").delete()
    sync_roles(apps)
    assert Group.objects.get(name="reviewer").permissions.count() == len(ROLE_PERMISSIONS["reviewer"])


def test_admin_approval_is_audited_and_patient_data_is_read_only_in_admin(admin_client: Client, patient: Any) -> None:
    user = get_user_model().objects.create_user(username="pending", password=PASSWORD, is_active=False)
    tech = Group.objects.get(name="technologist")
    form = admin_client.get(f"/admin/auth/user/{user.pk}/change/").content.decode()
    assert "is_active" in form
    data = {
        "username": "pending",
        "first_name": "",
        "last_name": "",
        "email": "",
        "is_active": "on",
        "groups": [tech.pk],
        "last_login_0": "",
        "last_login_1": "",
        "date_joined_0": "2026-11-21",
        "date_joined_1": "10:00:00",
    }
    response = admin_client.post(f"/admin/auth/user/{user.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    user.refresh_from_db()
    assert user.is_active and user.groups.filter(name="technologist").exists()
    event = AuditEvent.objects.get(action="user.admin_change")
    assert event.object_id == str(user.pk) and event.actor_username == "admin"
    assert event.data["groups"] == ["technologist"] and "is_active" in event.data["changed"]
    assert admin_client.get(f"/admin/patients/patient/{patient.pk}/change/").status_code == 200  # view only
    assert admin_client.post(f"/admin/patients/patient/{patient.pk}/change/", {"name": "X"}).status_code == 403
    assert admin_client.get(f"/admin/patients/patient/{patient.pk}/delete/").status_code == 403
    assert admin_client.get("/admin/patients/patient/add/").status_code == 403


def test_admin_user_list_shows_roles_and_approves_in_bulk(admin_client: Client, make_user: Any) -> None:
    from portal.audit.models import AuditEvent

    waiting = [make_user(f"new{i}", is_active=False) for i in range(2)]
    page = admin_client.get("/admin/auth/user/").content.decode()
    assert "Roles" in page and "(none: cannot use the portal)" in page
    response = admin_client.post(
        "/admin/auth/user/",
        {"action": "approve_as_reviewer", "_selected_action": [u.pk for u in waiting]},
        follow=True,
    )
    assert "2 account(s) activated as reviewer" in response.content.decode()
    for user in waiting:
        user.refresh_from_db()
        assert user.is_active and list(user.groups.values_list("name", flat=True)) == ["reviewer"]
    events = AuditEvent.objects.filter(action="user.admin_change", data__bulk_action="approve as reviewer")
    assert events.count() == 2
    assert (
        "Analyses" in admin_client.get("/admin/").content.decode()
        and "Analysiss" not in admin_client.get("/admin/").content.decode()
    )
