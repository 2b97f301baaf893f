"""The portal (web and job workers) runs where torch cannot be imported: it needs only the core package.

A child interpreter refuses every import of torch, torchvision, timm and training, then runs Django's
system checks, the job module, and the portal's URL walk, upload and logic tests in it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

BLOCKED = ("torch", "torchvision", "timm", "training")

CHILD = f"""
import importlib.abc, sys

class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"{{name}} is not available in the portal's environment")
        return None

sys.meta_path.insert(0, _Refuse())
import django
django.setup()
from django.core.management import call_command
call_command("check")
import portal.jobs, portal.run, portal.health, portal.errors  # noqa: E401  (web, workers, supervisor)
import pytest
code = pytest.main(["-q", "-p", "no:cacheprovider", "-m", "not integration and not browser and not slow",
                    "tests/portal/test_access.py", "tests/portal/test_upload.py", "tests/portal/test_logic.py"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
print("heavy modules loaded:", loaded)
sys.exit(code or (3 if loaded else 0))
"""


def test_portal_checks_and_pages_run_without_torch(tmp_path: Path) -> None:
    # its own SQLite database: a child pytest on this run's MySQL would create and then drop the
    # same test database under the parent's feet
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="portal.config.settings",
        PYTHONPATH=str(REPO),
        DATABASE_URL=f"sqlite:///{tmp_path / 'portal.sqlite3'}",
        PORTAL_VAR_DIR=str(tmp_path / "var"),
    )
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "heavy modules loaded: []" in output and " passed" in output, output[-2000:]
