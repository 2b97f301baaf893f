"""Create the demo administrator on first run (only when the database has no users at all)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

from portal.accounts.roles import ADMIN

# The demo admin is a superuser, so the second factor applies (portal/accounts/second_factor.py).
_SECOND_FACTOR = (
    "\n                    then enrol an authenticator app on the page shown (QR code or secret; README, Second factor)"
)


class Command(BaseCommand):
    help = "Create the demo admin (superuser in the admin group) if no user exists; print how to log in."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password-file", default=str(Path(settings.VAR_DIR) / "demo-admin-password.txt"))

    def handle(self, *args: Any, username: str, password_file: str, **options: Any) -> None:
        users = get_user_model().objects
        path = Path(password_file)
        if not users.exists():
            password = secrets.token_urlsafe(12)
            user = users.create_superuser(username=username, email="", password=password)
            user.groups.add(Group.objects.get(name=ADMIN))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(password + "\n")
            path.chmod(0o600)
            self.stdout.write(f"Created demo admin {username!r}; password: {password} (also in {path}){_SECOND_FACTOR}")
        elif path.exists() and users.filter(username=username).exists():
            self.stdout.write(f"Log in as {username!r} with the password in {path}{_SECOND_FACTOR}")
        else:
            self.stdout.write("Users exist already; log in with your account.")
