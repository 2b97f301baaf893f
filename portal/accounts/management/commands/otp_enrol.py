"""Enrol an authenticator app for an account from the server's shell (an operator's tool).

For what the enrolment page cannot do: a lost phone (``--replace`` removes the old device), a user
who cannot scan a QR code (the operator hands over the secret), and scripts driving the API as a
reviewer or admin (the load benchmark computes codes from the printed key). Running it needs the
server's shell and database, which already own every account, so it weakens nothing. Audited.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal.accounts import second_factor
from portal.actions.events import log_event


class Command(BaseCommand):
    help = "Create (or with --replace, replace) a user's confirmed TOTP device; print its otpauth URI and secret."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("--replace", action="store_true", help="delete the user's devices first (lost phone)")
        parser.add_argument("--json", action="store_true", dest="as_json", help="print uri, secret and hex key as JSON")

    def handle(self, *args: Any, username: str, replace: bool, as_json: bool, **options: Any) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r}")
        with transaction.atomic():
            existing = second_factor.confirmed_device(user)
            if existing is not None and not replace:
                raise CommandError(f"{username!r} has an authenticator app already; --replace removes it")
            TOTPDevice.objects.filter(user=user).delete()
            device = TOTPDevice.objects.create(user=user, name="Enrolled by an operator", confirmed=True)
            log_event(
                "user.otp_enrolled", actor=None, obj=user, data={"stage": "manage.py otp_enrol", "device": device.pk}
            )
        if as_json:
            self.stdout.write(
                json.dumps({"uri": device.config_url, "secret": second_factor.secret_base32(device), "key": device.key})
            )
            return
        self.stdout.write(f"Authenticator link: {device.config_url}")
        self.stdout.write(
            f"Secret (type into the app; time-based, 6 digits, 30 s): {second_factor.secret_base32(device)}"
        )
