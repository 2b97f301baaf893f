"""Settings from the environment: database URLs, production hardening (`check --deploy`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from portal.config.env import env_bool, env_map, parse_database_url
from tests.conftest import REPO


def test_sqlite_url_relative_and_absolute() -> None:
    assert parse_database_url("sqlite:///var/x.sqlite3", Path("/repo"))["NAME"] == "/repo/var/x.sqlite3"
    assert parse_database_url("sqlite:////tmp/x.sqlite3", Path("/repo"))["NAME"] == "/tmp/x.sqlite3"


def test_mysql_url_uses_utf8mb4() -> None:
    db = parse_database_url("mysql://root:p%40ss@127.0.0.1:3307/leukemia_portal", Path("/"))
    assert db["ENGINE"] == "django.db.backends.mysql"
    assert (db["NAME"], db["USER"], db["PASSWORD"], db["HOST"], db["PORT"]) == (
        "leukemia_portal",
        "root",
        "p@ss",
        "127.0.0.1",
        "3307",
    )
    assert db["OPTIONS"]["charset"] == "utf8mb4"
    assert db["TEST"]["CHARSET"] == "utf8mb4"


@pytest.mark.parametrize("url", ["postgres://x/y", "mysql://root@host/"])
def test_bad_database_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_database_url(url, Path("/"))


def test_env_bool_refuses_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ValueError):
        env_bool("X_FLAG")


def test_env_map_reads_model_urls_and_refuses_an_item_without_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_URLS", " a=http://h-a/ , b=http://h-b:80,, ")
    assert env_map("X_URLS", {}) == {"a": "http://h-a/", "b": "http://h-b:80"}
    monkeypatch.delenv("X_URLS")
    assert env_map("X_URLS", {"d": "1"}) == {"d": "1"}
    for bad in ("a", "a=", "=http://h"):
        monkeypatch.setenv("X_URLS", bad)
        with pytest.raises(ValueError, match="not key=value"):
            env_map("X_URLS", {})


def test_the_checks_refuse_an_unknown_protocol_and_bad_model_urls() -> None:
    bad = _manage(
        "check",
        PORTAL_INFERENCE_PROTOCOL="grpc",
        PORTAL_MODEL_URLS="xception_bigru=ftp://h,no_such_model=http://h",
    )
    assert bad.returncode != 0
    for code in ("portal.E002", "portal.E003", "portal.E004"):
        assert code in bad.stderr, bad.stderr
    good = _manage("check", PORTAL_INFERENCE_PROTOCOL="v2", PORTAL_MODEL_URLS="wbc_cells=http://wbc-cells.lab.svc")
    assert good.returncode == 0, good.stderr


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    full_env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, str(REPO / "portal" / "manage.py"), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_under_production_settings(tmp_path: Path) -> None:
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_SETTINGS_MODULE="portal.config.settings_production",
        DJANGO_SECRET_KEY="k" * 20 + "-production-secret-" + "q9" * 20,
        PORTAL_VAR_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout + result.stderr


def test_production_settings_refuse_missing_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    env.update(DJANGO_SETTINGS_MODULE="portal.config.settings_production", PORTAL_VAR_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, str(REPO / "portal" / "manage.py"), "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_migrations_are_committed(tmp_path: Path) -> None:
    result = _manage("makemigrations", "--check", "--dry-run", PORTAL_VAR_DIR=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
