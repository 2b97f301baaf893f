"""Settings helpers: read typed values and database URLs from the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

__all__ = ["env_bool", "env_int", "env_list", "env_map", "env_str", "parse_database_url"]


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={value!r} is not a boolean")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_map(name: str, default: dict[str, str]) -> dict[str, str]:
    """``key=value,key=value`` (spaces around items ignored); an item without ``=`` is an error."""
    value = os.environ.get(name)
    if value is None:
        return default
    out: dict[str, str] = {}
    for item in (i.strip() for i in value.split(",")):
        if not item:
            continue
        key, sep, val = item.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise ValueError(f"{name}: {item!r} is not key=value")
        out[key.strip()] = val.strip()
    return out


def parse_database_url(url: str, base_dir: Path) -> dict[str, Any]:
    """Turn ``sqlite:///path`` or ``mysql://user:pass@host:port/name`` into a Django DATABASES entry.

    A relative SQLite path is resolved against ``base_dir``. MySQL connections use utf8mb4 and
    strict mode, and the test database is ``test_<name>`` (pytest-django creates it).
    """
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        raw = url[len("sqlite:///") :] if url.startswith("sqlite:///") else parsed.path
        if raw in ("", ":memory:"):
            return {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
        path = Path(raw)
        if not path.is_absolute():
            path = base_dir / path
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(path),
            # Web and worker processes write at once: WAL lets readers go on during a write, the busy
            # timeout makes a writer wait for the lock instead of failing, and IMMEDIATE takes the
            # write lock at BEGIN, so a transaction never has to upgrade a read lock (which SQLite
            # refuses with "database is locked" however long the timeout).
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    if parsed.scheme in {"mysql", "mariadb"}:
        name = parsed.path.lstrip("/")
        if not name:
            raise ValueError("DATABASE_URL for MySQL needs a database name: mysql://user:pass@host:port/name")
        return {
            "ENGINE": "django.db.backends.mysql",
            "NAME": name,
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "127.0.0.1",
            "PORT": str(parsed.port or 3306),
            # READ COMMITTED (Django's default for MySQL) with short lock waits and socket timeouts:
            # a stuck or restarted server fails a request quickly (503) instead of hanging a worker.
            "OPTIONS": {
                "charset": "utf8mb4",
                "init_command": "SET sql_mode='STRICT_TRANS_TABLES', innodb_lock_wait_timeout=20",
                "isolation_level": "read committed",
                "connect_timeout": 5,
                "read_timeout": 60,
                "write_timeout": 60,
            },
            "TEST": {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"},
        }
    raise ValueError(f"unsupported DATABASE_URL scheme {parsed.scheme!r} (use sqlite:/// or mysql://)")
