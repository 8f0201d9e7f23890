"""Schemathesis against /api/openapi.json in process: no route answers 5xx; responses match the schema."""

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from project.wsgi import application

schema = schemathesis.openapi.from_wsgi("/api/openapi.json", application)


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
        ],
    )


@pytest.fixture
def keep_connection():
    """Called straight through WSGI, Django would close the test's connection after each request
    (as Django's own test client prevents, so does this)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.mark.slow
@pytest.mark.django_db
@schema.parametrize()
@fuzz(30)
def test_api_survives_generated_requests(case, keep_connection):
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])


writes = schema.include(method=["POST", "DELETE"])


@pytest.mark.slow
@pytest.mark.django_db
@writes.parametrize()
@fuzz(40)
def test_authenticated_writes_survive_generated_requests(case, keep_connection, writer_token):
    """The same with a token that may write: generated documents are stored or refused with a 4xx."""
    response = case.call(headers={"Authorization": f"Bearer {writer_token}"})
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
    assert response.status_code not in (401, 403), response.text
