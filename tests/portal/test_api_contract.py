"""The API keeps its contract: schemathesis (its CLI, every check, every phase, the stateful one included)
against the running API, authenticated as an administrator, finds nothing.

"Nothing" covers: no server error; every answer's status code, content type, headers and body as
/api/schema/ documents them (portal.api.schema documents the error answers of every operation); every
request the schema allows is accepted (or refused only with a documented 401/403/404/409), and every
request it forbids is refused. A run is bounded (``MAX_EXAMPLES`` per operation, a fixed seed) to take
about a minute on 2 cores; set SCHEMATHESIS_MAX_EXAMPLES and SCHEMATHESIS_SEED to search harder.
The server is Django's live test server on the test database (pytest-django's ``live_server``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "6"))
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261207")


@pytest.fixture
def admin_token(django_user_model: Any, settings: Any) -> str:
    from rest_framework.authtoken.models import Token

    settings.TORCHSERVE_URL = "http://127.0.0.1:9"  # uploads queue jobs; nothing calls a model server here
    admin = django_user_model.objects.create_superuser("contract-admin", "contract@example.org", "contract-pw-123")
    return str(Token.objects.create(user=admin).key)


def test_schemathesis_finds_no_contract_violation(live_server: Any, admin_token: str, tmp_path: Path) -> None:
    st = Path(sys.executable).with_name("st")
    cmd = [
        str(st),
        "run",
        f"{live_server.url}/api/schema/",
        "--header",
        f"Authorization: Token {admin_token}",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        SEED,
        "--workers",
        "1",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), SCHEMATHESIS_HOOKS="tests.portal.schemathesis_hooks")
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-12000:]
    summary = out[out.rfind("SUMMARY") :]
    assert "Tested: " in summary and "Stateful" in summary, summary
    tested = int(summary.split("Tested: ", 1)[1].split()[0])
    assert tested >= 20, summary  # every operation of the API, not a schema that failed to load
    print(summary)
