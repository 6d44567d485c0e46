"""Scenario 13: property-based fuzzing of the API with schemathesis, from the project's own OpenAPI schema.

The schema is the one the app serves (/api/schema/); requests go to the WSGI application in this
process (real middleware, token authentication, views, the pipeline with the stub LLM and the real
catalogue vector store, eager Celery). Each operation gets schema-conforming (positive) and
schema-violating (negative) examples, and every response is checked: never a 5xx, and status code,
content type, headers and body conform to the schema; negative examples must be refused with a 4xx.
The number of examples is bounded and the generation derandomized, so the test is fast and a failure
reproduces.

One check is left out: `positive_data_acceptance` (a schema-valid request must not get a 4xx). Some
rules are validated by the server and cannot be written in JSON Schema without lying about them: a query
that is blank once trimmed, NUL characters, year_min <= year_max, exactly one of queries/jobs/filter,
an Idempotency-Key reused with another body. Those answers are 400/422 in the documented error shape,
which the other checks verify. Everything else runs, including `negative_data_rejection`: a request that
violates the schema (an unknown field, a wrong type, a path that is not a UUID) must be refused.

schemathesis' own pytest integration (`@schema.parametrize()`) does not run under pytest 9 (it sets a
private `_nodeid`), so the operations are parametrized here and each one drives Hypothesis itself.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from apps.agent.throttling import FailOpenUserRateThrottle

pytestmark = [pytest.mark.security, pytest.mark.django_db]

#: Examples per operation and generation mode (about 20 s for the 15 operations, both modes).
MAX_EXAMPLES = 20
#: What every response is checked for, named here rather than left to schemathesis' configured defaults:
#: a mismatch between what the API answers and what its schema says fails the run, not only a 5xx.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def _load_schema():
    from config.wsgi import application

    return schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)


SCHEMA = _load_schema()
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@pytest.fixture
def fuzz_token(known_settings, catalogue_vector_settings, user, monkeypatch):
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections
    from rest_framework.authtoken.models import Token

    from apps.agent import apis

    # Like Django's test client: the WSGI handler would close the connection that holds the test's
    # transaction at the end of each request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)

    known_settings.VECTOR = catalogue_vector_settings
    # Generous rates: throttling has its own test, and a 429 here would hide what the fuzzer finds. (The
    # throttles read their rates once, at import: the class attribute is what counts, not the setting.)
    monkeypatch.setattr(
        FailOpenUserRateThrottle, "THROTTLE_RATES", {"job_create": "100000/min", "batch_create": "100000/min"}
    )
    # Health probes a worker and Redis (a second per call); its shape is checked with a fixed report.
    monkeypatch.setattr(
        apis.system,
        "health_check",
        lambda: (True, {"status": "ok", "failing": [], "checks": {"database": {"ok": True}}}),
    )
    yield Token.objects.get_or_create(user=user)[0].key
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def test_every_operation_is_fuzzed():
    """Guards the parametrization: an empty schema would make the fuzz tests pass vacuously."""
    labels = {operation.label for operation in OPERATIONS}
    assert {"POST /api/agent/jobs", "GET /api/agent/jobs/{job_id}", "POST /api/agent/"} <= labels


#: Operations that take no input at all (no parameters, no body): nothing about them can be made
#: invalid, so they are fuzzed with valid data only. Checked below so that the list cannot go stale.
NO_INPUT = {"GET /api/health", "GET /api/ping", "GET /api/webhooks/secret", "POST /api/webhooks/secret"}
CASES = [
    pytest.param(operation, mode, id=f"{operation.label}-{mode}")
    for operation in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if not (mode is GenerationMode.NEGATIVE and operation.label in NO_INPUT)
]


def test_operations_without_input_really_take_none():
    for operation in OPERATIONS:
        if operation.label in NO_INPUT:
            definition = operation.definition.raw
            assert not definition.get("parameters") and "requestBody" not in definition, operation.label


@pytest.mark.parametrize(("operation", "mode"), CASES)
def test_api_conforms_to_its_schema(operation, mode, fuzz_token):
    headers = {"Authorization": f"Token {fuzz_token}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case):
        case.call_and_validate(headers=headers, checks=CHECKS)

    fuzz()


def _operation(label: str):
    return next(operation for operation in OPERATIONS if operation.label == label)


def test_the_checks_fail_on_an_undocumented_status_and_body(fuzz_token, monkeypatch):
    """Guards CHECKS: an answer the schema does not describe fails, though it is no 5xx."""
    from rest_framework.response import Response
    from schemathesis.core.failures import FailureGroup

    from apps.agent import apis

    monkeypatch.setattr(apis.PingApi, "get", lambda self, request: Response({"ok": True}, status=418))
    with pytest.raises(FailureGroup, match="Undocumented status code"):
        _operation("GET /api/ping").Case().call_and_validate(checks=CHECKS)

    monkeypatch.setattr(apis.system, "health_check", lambda: (True, {"status": 5, "checks": "none"}))
    with pytest.raises(FailureGroup, match="Response violates schema"):
        _operation("GET /api/health").Case().call_and_validate(checks=CHECKS)


#: Operations that take a body (413 beyond DATA_UPLOAD_MAX_MEMORY_SIZE) and are throttled (429).
#: Each with a small body and a schema-valid one of 2000+ bytes.
BODY_AND_THROTTLED = {
    "POST /api/agent/": ({"query": "whales"}, {"query": "w" * 2000}),
    "POST /api/agent/jobs": ({"query": "whales"}, {"query": "w" * 2000}),
    "POST /api/agent/batches": ({"queries": ["whales"]}, {"queries": ["w" * 2000]}),
}


@pytest.mark.parametrize("label", sorted(BODY_AND_THROTTLED))
def test_oversized_and_throttled_answers_are_documented(label, fuzz_token, known_settings, monkeypatch):
    """The fuzzer never meets these (bodies under 64 KiB, generous rates): provoked here, checked alike."""
    from django.core.cache import cache

    cache.clear()
    known_settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    monkeypatch.setattr(
        FailOpenUserRateThrottle, "THROTTLE_RATES", {"job_create": "1/min", "batch_create": "1/min"}
    )
    operation = _operation(label)
    headers = {"Authorization": f"Token {fuzz_token}"}
    body, large = BODY_AND_THROTTLED[label]

    oversized = operation.Case(body=large, headers=headers)
    assert oversized.call_and_validate(checks=CHECKS).status_code == 413
    assert operation.Case(body=body, headers=headers).call_and_validate(checks=CHECKS).status_code < 300
    assert operation.Case(body=body, headers=headers).call_and_validate(checks=CHECKS).status_code == 429
