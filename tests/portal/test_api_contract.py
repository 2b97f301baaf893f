"""The API keeps its contract: schemathesis (its CLI, every check, every phase, the stateful one included)
against the running API, authenticated as an administrator, finds nothing; and the rules behind it,
one by one, with Django's test client (fast).

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

pytestmark = [pytest.mark.django_db]

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "6"))
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261207")


@pytest.fixture
def admin_token(django_user_model: Any, settings: Any) -> str:
    from rest_framework.authtoken.models import Token

    settings.TORCHSERVE_URL = "http://127.0.0.1:9"  # uploads queue jobs; nothing calls a model server here
    admin = django_user_model.objects.create_superuser("contract-admin", "contract@example.org", "contract-pw-123")
    return str(Token.objects.create(user=admin).key)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
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


@pytest.fixture
def api(technologist: Any) -> Any:
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(technologist)
    return client


def _schema(api: Any) -> dict[str, Any]:
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return dict(response.json())


def test_every_operation_documents_its_error_answers(api: Any) -> None:
    schema = _schema(api)
    operations = [(path, method, op) for path, item in schema["paths"].items() for method, op in item.items()]
    assert len(operations) >= 20
    for path, method, op in operations:
        codes = set(op["responses"])
        assert "503" in codes, (method, path)
        if path != "/api/auth/token/":
            assert {"401", "403"} <= codes, (method, path, codes)
        if "{id}" in path or method in ("post", "put", "patch"):
            assert "404" in codes, (method, path, codes)
        if method in ("post", "put", "patch"):
            assert {"400", "409", "415"} <= codes, (method, path, codes)
        for code, answer in op["responses"].items():
            if code.startswith(("4", "5")):
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ValidationError" if code == "400" else "/Error"), (method, path, code)
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"detail", "code"}
    patient = schema["components"]["schemas"]["PatientRequest"]
    assert patient["additionalProperties"] is False
    from portal.patients.validators import PRINTABLE_PATTERNS

    mrn = [rule["pattern"] for rule in patient["properties"]["mrn"]["allOf"]]
    assert mrn == [*PRINTABLE_PATTERNS, "^[^\\u0000]*$"], mrn  # the same every time the schema is built
    assert _schema(api)["components"]["schemas"]["PatientRequest"] == patient
    page = next(p for p in schema["paths"]["/api/patients/"]["get"]["parameters"] if p["name"] == "page")
    assert page["schema"]["minimum"] == 1


@pytest.mark.parametrize("query", ["page=", "page=0", "page=abc", "page=1&page=2", "page=%EF%BC%91"])
def test_a_page_the_schema_does_not_allow_is_refused(api: Any, query: str) -> None:
    response = api.get(f"/api/patients/?{query}")
    assert response.status_code == 400 and "page" in response.json(), response.content


def test_a_page_past_the_last_is_404_with_a_code(api: Any) -> None:
    response = api.get("/api/patients/?page=7")
    assert response.status_code == 404 and response.json()["code"] == "not_found"


@pytest.mark.parametrize("query", ["patient=x", "patient=0", "patient=1&patient=2"])
def test_an_invalid_filter_is_refused(api: Any, query: str) -> None:
    response = api.get(f"/api/specimens/?{query}")
    assert response.status_code == 400 and "patient" in response.json()
    assert api.get("/api/analyses/?status=finished").status_code == 400


def test_unknown_fields_and_wrong_types_are_refused(api: Any, patient: Any) -> None:
    body = {"mrn": "C-1", "name": "Ada", "date_of_birth": "1990-01-01"}
    unknown = api.post("/api/patients/", {**body, "nmae": "typo"}, format="json")
    assert unknown.status_code == 400 and unknown.json() == {"nmae": ["Unknown field."]}
    wrong = api.post("/api/patients/", {**body, "name": 7}, format="json")
    assert wrong.status_code == 400 and wrong.json() == {"name": ["Incorrect type: expected a string."]}
    spaced = api.post("/api/patients/", {**body, "name": " Ada"}, format="json")
    assert spaced.status_code == 400 and "name" in spaced.json()
    assert api.post("/api/patients/", body, format="json").status_code == 201


def test_a_missing_referenced_record_is_404_and_wrong_credentials_401(api: Any) -> None:
    missing = api.post("/api/specimens/", {"patient": 999999, "accession": "A-1"}, format="json")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found", missing.content
    assert "patient" in missing.json()["detail"]
    from rest_framework.test import APIClient

    wrong = APIClient().post("/api/auth/token/", {"username": "nobody", "password": "x"})
    assert wrong.status_code == 401 and wrong.json()["code"] == "authentication_failed"
    assert wrong["WWW-Authenticate"] == "Token"


def test_an_unknown_api_url_answers_json(api: Any) -> None:
    response = api.get("/api/no-such-thing/")
    assert response.status_code == 404 and response.json() == {"detail": "Not found.", "code": "not_found"}
    assert api.get("/api/patients/123456/").json()["code"] == "not_found"
