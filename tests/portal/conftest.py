"""Portal fixtures: users in each role, a patient with a specimen, real smear images, private storage in tmp."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from tests.conftest import DATA_ALL4

PASSWORD = "correct-horse-battery-9"
ORIGINALS = DATA_ALL4 / "original"


@pytest.fixture(autouse=True)
def _portal_settings(settings: Any, tmp_path: Path) -> None:
    """Private storage in a temp dir; no waiting between retries; fast hashing.

    Uploads queue their jobs in the test database; a test runs them with ``portal.jobs.run_queued``.
    Login lockout (django-axes) is off except in tests/portal/test_security.py. The cell analysis
    (PORTAL_CELL_MODEL) is off, so the leukemia-model tests count only their own jobs;
    tests/portal/test_cells.py turns it on.
    """
    settings.PORTAL_STORAGE_DIR = tmp_path / "storage"
    settings.PORTAL_CELL_MODEL = ""
    settings.PORTAL_RETRY_MAX_DELAY_S = 0
    settings.AXES_ENABLED = False  # Client.login() authenticates without a request; test_security turns it on
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    from django.core.cache import cache

    cache.clear()  # answers cached per user (second factor needed?) must not outlive the test's users


@pytest.fixture
def make_user(django_user_model: Any) -> Callable[..., Any]:
    def make(username: str, role: str | None = None, **extra: Any) -> Any:
        user = django_user_model.objects.create_user(username=username, password=PASSWORD, **extra)
        if role:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def technologist(make_user: Callable[..., Any]) -> Any:
    return make_user("tech", "technologist")


@pytest.fixture
def reviewer(make_user: Callable[..., Any]) -> Any:
    return make_user("rev", "reviewer")


@pytest.fixture
def norole(make_user: Callable[..., Any]) -> Any:
    return make_user("norole")


def otp_device(user: Any) -> Any:
    """The user's confirmed TOTP device, made if missing (as enrolment on the setup page would)."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    return device or TOTPDevice.objects.create(user=user, name="test app", confirmed=True)


def otp_code(device: Any) -> str:
    """The code an authenticator app would show now for ``device`` (django-otp's own TOTP)."""
    from django_otp.oath import totp

    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits, drift=device.drift):06d}"


def verify_second_factor(client: Client, user: Any) -> None:
    """Mark the client's session as having given a second-factor code, as django_otp.login does
    after a correct code (the session holds the device's persistent id); tests/portal/test_otp.py
    goes through the code pages themselves."""
    from django_otp import DEVICE_ID_SESSION_KEY

    session = client.session
    session[DEVICE_ID_SESSION_KEY] = otp_device(user).persistent_id
    session.save()


def login(user: Any, **client_kwargs: Any) -> Client:
    """A client logged in with the password, and, for the roles that need it (reviewer, admin,
    superuser: portal.accounts.second_factor), with the second factor given too."""
    from portal.accounts.second_factor import needs_second_factor

    client = Client(**client_kwargs)
    assert client.login(username=user.username, password=PASSWORD)
    if needs_second_factor(user):
        verify_second_factor(client, user)
    return client


@pytest.fixture
def admin_client(admin_user: Any) -> Client:
    """pytest-django's admin client (a superuser), with the second factor given as login() does."""
    client = Client()
    client.force_login(admin_user)
    verify_second_factor(client, admin_user)
    return client


@pytest.fixture
def tech_client(technologist: Any) -> Client:
    return login(technologist)


@pytest.fixture
def rev_client(reviewer: Any) -> Client:
    return login(reviewer)


@pytest.fixture
def patient(technologist: Any) -> Any:
    from portal.actions.patients import create_patient

    return create_patient(
        technologist, {"mrn": "MRN0001", "name": "Ada Lovelace", "date_of_birth": "1990-12-10", "sex": "F"}
    )


@pytest.fixture
def specimen(technologist: Any, patient: Any) -> Any:
    from portal.actions.patients import create_specimen

    return create_specimen(technologist, patient, {"accession": "ACC-1", "collected_by": "tech"})


def smear_paths(n: int) -> list[Path]:
    """``n`` real smear images, spread over the four classes."""
    if not ORIGINALS.is_dir():
        pytest.fail(f"real smear images not found at {ORIGINALS}")
    classes = sorted(p for p in ORIGINALS.iterdir() if p.is_dir())
    out: list[Path] = []
    i = 0
    while len(out) < n:
        files = sorted(classes[i % len(classes)].glob("*.jpg"))
        out.append(files[i // len(classes)])
        i += 1
    return out


def validated(paths: list[Path]) -> list[Any]:
    """``paths`` as the portal's validated uploads: what the upload page and the API hand to
    ``upload_images``."""
    from portal.analyses.validation import validate_image_bytes

    return [validate_image_bytes(p.name, p.read_bytes()) for p in paths]


# --- a real TorchServe (serving.torchserve), for the integration and browser tests -------------------


@pytest.fixture
def use_torchserve(torchserve: Any, settings: Any) -> Any:
    """Point the portal at the session TorchServe (its URL and its key file)."""
    settings.TORCHSERVE_URL = torchserve.inference_url
    settings.TORCHSERVE_WORKDIR = torchserve.workdir
    settings.TORCHSERVE_KEY = ""
    return torchserve
