"""API fuzzing with schemathesis against the portal's own OpenAPI schema (/api/schema/), authenticated.

Every operation gets a bounded number of generated requests (valid and invalid: both generation modes), sent in-process
through the WSGI app with an administrator's token, so that every endpoint is
reachable. Checks: no server error (5xx) and every documented answer conforms to the schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

pytestmark = [pytest.mark.django_db]


def _with_token(app: Callable[..., Any], key: str) -> Callable[..., Any]:
    """WSGI middleware: every request carries ``Authorization: Token <key>``."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ["HTTP_AUTHORIZATION"] = f"Token {key}"
        return app(environ, start_response)

    return wrapped


@pytest.fixture
def _keep_the_test_connection() -> Iterator[None]:
    """As Django's test client does: the handler must not close the test's database connection (it would
    drop the test transaction on MySQL) at the start and end of each in-process request."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def api_schema(django_user_model: Any, specimen: Any, settings: Any, _keep_the_test_connection: None) -> Any:
    from django.core.wsgi import get_wsgi_application
    from rest_framework.authtoken.models import Token

    settings.TORCHSERVE_URL = "http://127.0.0.1:9"  # uploads queue jobs; nothing calls a model server here
    admin = django_user_model.objects.create_superuser("fuzz-admin", "fuzz@example.org", "fuzz-password-123")
    key = Token.objects.create(user=admin).key
    return schemathesis.openapi.from_wsgi("/api/schema/", _with_token(get_wsgi_application(), key))


def test_api_has_no_server_errors_and_answers_as_documented(api_schema: Any) -> None:
    """Each operation, its own bounded hypothesis run (schemathesis' pytest plugin does not load under pytest 9)."""
    tested = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

        @given(case=strategy)
        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def check(case: Any) -> None:
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])

        check()
        tested.append(f"{operation.method.upper()} {operation.path}")
    assert len(tested) >= 10, tested
