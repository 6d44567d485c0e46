"""Scenario 12: hostile input is refused with a 4xx in the one error shape, and nothing is stored or enqueued.

Every request goes through the real middleware, parsers, authentication (a token) and views, in process.
`apply_async` of every task is replaced by a recorder, and the pipeline by a tripwire, so "nothing
enqueued" and "nothing run" are observed, not inferred.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from unittest import mock

import pytest
from django.core.cache import cache
from django.urls import NoReverseMatch, reverse

from apps.agent.models import AgentJob

pytestmark = [pytest.mark.security, pytest.mark.django_db]

JOBS = "/api/agent/jobs"
SYNC = "/api/agent/"
CANARY_KEY = "byo-bad-input-canary-0123456789"


def _batch_create_url() -> str | None:
    """The batch creation endpoint, once the batches API exists."""
    for name in ("agent-batches", "agent-batch-list", "batches"):
        try:
            return reverse(name)
        except NoReverseMatch:
            continue
    return None


def create_endpoints() -> list[str]:
    endpoints = [JOBS, SYNC]
    batch_url = _batch_create_url()
    if batch_url:
        endpoints.append(batch_url)
    return endpoints


@pytest.fixture
def recorder(monkeypatch):
    """Records every task publication and fails the test if the agent pipeline runs."""
    from agent import pipeline
    from apps.agent import tasks as agent_tasks
    from apps.webhooks import tasks as webhook_tasks

    published: list[str] = []
    for module in (agent_tasks, webhook_tasks):
        for name in dir(module):
            task = getattr(module, name)
            if hasattr(task, "apply_async") and hasattr(task, "name"):
                monkeypatch.setattr(
                    task,
                    "apply_async",
                    lambda *a, _name=task.name, **k: published.append(_name),
                )

    def tripwire(*args, **kwargs):
        raise AssertionError("the pipeline ran for a request that should have been refused")

    monkeypatch.setattr(pipeline, "run", tripwire)
    return published


@pytest.fixture
def hybrid(known_settings):
    """Hybrid cost mode with BYO keys allowed: a key sent with bad input must not be handed off either."""
    known_settings.LLM = dataclasses.replace(
        known_settings.LLM,
        provider="openai_compatible",
        base_url="http://127.0.0.1:9/v1",
        api_key="sk-server-key-bad-input",
        cost_mode=type(known_settings.LLM.cost_mode)("hybrid"),
        allow_byo_key=True,
    )
    return known_settings


def assert_error_shape(response, status: int | tuple[int, ...], code: str | None = None) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def assert_nothing_happened(published: list[str], jobs_before: int) -> None:
    assert published == []
    assert AgentJob.objects.count() == jobs_before
    # No BYO key was handed off for a refused request (the locmem cache holds nothing at all).
    assert not any("byo-key" in str(key) for key in cache._cache), list(cache._cache)


def post_raw(client, url: str, body: bytes | str, content_type: str = "application/json", **extra):
    return client.generic(
        "POST", url, body, content_type=content_type, HTTP_X_LLM_API_KEY=CANARY_KEY, **extra
    )


# --- oversized bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", create_endpoints())
@pytest.mark.parametrize(
    "content_type", ["application/json", "application/x-www-form-urlencoded", "text/plain"]
)
def test_oversized_body_is_413_in_the_error_shape(api, hybrid, recorder, url, content_type):
    """A body over DATA_UPLOAD_MAX_MEMORY_SIZE is refused before anything parses it, whatever its type."""
    limit = hybrid.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = json.dumps({"query": "whales " * (limit // 6), "top_k": 3})
    assert len(body) > limit
    before = AgentJob.objects.count()

    response = post_raw(api, url, body, content_type=content_type)

    error = assert_error_shape(response, 413, "request_too_large")
    assert error["error"]["details"] == {"max_bytes": limit}
    assert_nothing_happened(recorder, before)


def test_oversized_body_is_413_even_unauthenticated(anon, recorder):
    """The size check runs before authentication: an anonymous flood cannot make us read big bodies."""
    response = anon.generic("POST", JOBS, b"x" * (200 * 1024), content_type="application/json")

    assert_error_shape(response, 413, "request_too_large")


def test_body_just_under_the_limit_is_validated_normally(api, hybrid, recorder):
    limit = hybrid.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = json.dumps({"query": "x" * (limit - 100)})
    before = AgentJob.objects.count()

    response = post_raw(api, JOBS, body)

    body = assert_error_shape(response, 400, "validation_error")
    assert "query" in body["error"]["details"]
    assert_nothing_happened(recorder, before)


# --- malformed bodies ----------------------------------------------------------------------------------

MALFORMED = [
    pytest.param(b'{"query": "whales",', "application/json", "parse_error", id="truncated-json"),
    pytest.param(b'{"query": "whales"} trailing', "application/json", "parse_error", id="trailing-garbage"),
    pytest.param(b'{"query": "\xff\xfe whales"}', "application/json", "parse_error", id="invalid-utf8"),
    pytest.param(b'\xef\xbb\xbf{"query": 1}', "application/json", None, id="utf8-bom"),
    pytest.param(b'{"query": "whales", "top_k": NaN}', "application/json", "parse_error", id="nan"),
    pytest.param(b'{"query": "whales", "top_k": Infinity}', "application/json", "parse_error", id="infinity"),
    pytest.param(
        b'{"query": "whales", "top_k": ' + b"9" * 5000 + b"}",
        "application/json",
        "parse_error",
        id="int-5000-digits",
    ),
    pytest.param(
        b'{"query": "whales"}', "application/json; charset=bz2_codec", "parse_error", id="bz2-charset"
    ),
    pytest.param(b"[" * 100_00 + b"]" * 100_00, "application/json", None, id="deep-nesting"),
    pytest.param(b"query=whales", "text/plain", "unsupported_media_type", id="text-plain"),
    pytest.param(b"<query>whales</query>", "application/xml", "unsupported_media_type", id="xml"),
    pytest.param(
        b"query=whales&top_k=3", "application/x-www-form-urlencoded", "unsupported_media_type", id="form"
    ),
    pytest.param(
        b'--b\r\nContent-Disposition: form-data; name="query"\r\n\r\nwhales\r\n--b--\r\n',
        "multipart/form-data; boundary=b",
        "unsupported_media_type",
        id="multipart",
    ),
]


@pytest.mark.parametrize("url", create_endpoints())
@pytest.mark.parametrize(("raw", "content_type", "code"), MALFORMED)
def test_malformed_body_is_4xx(api, hybrid, recorder, url, raw, content_type, code):
    before = AgentJob.objects.count()

    response = post_raw(api, url, raw, content_type=content_type)

    assert_error_shape(response, (400, 415), code)
    assert_nothing_happened(recorder, before)


# --- wrong types, NUL bytes, huge numbers, unknown fields -----------------------------------------------

INVALID_BODIES = [
    pytest.param([], id="array-body"),
    pytest.param("whales", id="string-body"),
    pytest.param(42, id="number-body"),
    pytest.param(None, id="null-body"),
    pytest.param({}, id="empty-object"),
    pytest.param({"query": 123}, id="query-int"),
    pytest.param({"query": None}, id="query-null"),
    pytest.param({"query": ["whales"]}, id="query-list"),
    pytest.param({"query": {"text": "whales"}}, id="query-object"),
    pytest.param({"query": True}, id="query-bool"),
    pytest.param({"query": "whales", "top_k": "abc"}, id="top_k-str"),
    pytest.param({"query": "whales", "top_k": 2.5}, id="top_k-float"),
    pytest.param({"query": "whales", "top_k": True}, id="top_k-bool"),
    pytest.param({"query": "whales", "top_k": []}, id="top_k-list"),
    pytest.param({"query": "whales", "top_k": None}, id="top_k-null"),
    pytest.param({"query": "whales", "top_k": 0}, id="top_k-0"),
    pytest.param({"query": "whales", "top_k": -1}, id="top_k-negative"),
    pytest.param({"query": "whales", "top_k": 51}, id="top_k-51"),
    pytest.param({"query": "whales", "top_k": 10**100}, id="top_k-googol"),
    pytest.param({"query": "whales", "top_k": 2**63}, id="top_k-2^63"),
    pytest.param({"query": "whales", "top_k": "9" * 2000}, id="top_k-long-string"),
    pytest.param({"query": "whales", "filters": "fantasy"}, id="filters-string"),
    pytest.param({"query": "whales", "filters": ["fantasy"]}, id="filters-list"),
    pytest.param({"query": "whales", "filters": {"language": 5}}, id="language-int"),
    pytest.param({"query": "whales", "filters": {"genres": "fantasy"}}, id="genres-string"),
    pytest.param({"query": "whales", "filters": {"genres": ["x"] * 11}}, id="genres-too-many"),
    pytest.param({"query": "whales", "filters": {"year_min": "old"}}, id="year-string"),
    pytest.param({"query": "whales", "filters": {"year_min": 10**30}}, id="year-huge"),
    pytest.param({"query": "whales", "filters": {"year_min": 2000, "year_max": 1900}}, id="years-swapped"),
    pytest.param({"query": "a\x00b"}, id="nul-in-query"),
    pytest.param({"query": "\x00"}, id="only-nul"),
    pytest.param({"query": "whales", "filters": {"language": "e\x00"}}, id="nul-in-language"),
    pytest.param({"query": "whales", "filters": {"genres": ["fan\x00tasy"]}}, id="nul-in-genre"),
    pytest.param({"query": "whales", "filters": {"genres": ["fan\ntasy"]}}, id="newline-in-genre"),
    pytest.param({"query": "whales", "\x00": 1}, id="nul-field-name"),
    pytest.param({"query": "x" * 4001}, id="query-4001-chars"),
    pytest.param({"query": " \t\n "}, id="query-blank"),
    pytest.param({"query": "whales", "priority": "high"}, id="unknown-field"),
    pytest.param({"query": "whales", "owner": 1}, id="unknown-field-owner"),
    pytest.param({"query": "whales", "filters": {"colour": "red"}}, id="unknown-filter"),
]


@pytest.mark.parametrize("url", create_endpoints())
@pytest.mark.parametrize("body", INVALID_BODIES)
def test_invalid_body_is_400_validation_error(api, hybrid, recorder, url, body):
    before = AgentJob.objects.count()

    response = post_raw(api, url, json.dumps(body))

    assert_error_shape(response, 400)
    assert_nothing_happened(recorder, before)


BATCH_INVALID_BODIES = [
    pytest.param({"queries": [123]}, id="query-int"),
    pytest.param({"queries": "whales"}, id="queries-string"),
    pytest.param({"queries": ["a\x00b"]}, id="nul-in-query"),
    pytest.param({"queries": ["x" * 4001]}, id="query-4001-chars"),
    pytest.param({"queries": [" "]}, id="query-blank"),
    pytest.param({"queries": []}, id="queries-empty"),
    pytest.param({"queries": ["whales"] * 5000}, id="queries-5000"),
    pytest.param({"queries": ["whales"], "jobs": []}, id="two-selections"),
    pytest.param({"jobs": ["not-a-uuid"]}, id="job-id-not-uuid"),
    pytest.param({"jobs": [str(uuid.uuid4())]}, id="job-id-unknown"),
    pytest.param({"filter": {"status": "bogus"}}, id="filter-status"),
    pytest.param({"filter": {"created_after": "yesterday"}}, id="filter-date"),
    pytest.param({"queries": ["whales"], "overrides": {"top_k": 10**9}}, id="override-top_k"),
    pytest.param({"queries": ["whales"], "overrides": {"model": "m" * 201}}, id="override-model-long"),
    pytest.param({"queries": ["whales"], "overrides": {"cost_mode": "free"}}, id="override-cost-mode"),
    pytest.param({"queries": ["whales"], "overrides": {"api_key": "sk-x"}}, id="override-unknown"),
    pytest.param({"queries": ["whales"], "overrides": {"vector_store_build": "../../etc"}}, id="build-path"),
    pytest.param({"queries": ["whales"], "webhook_url": "http://169.254.169.254/"}, id="webhook-metadata"),
    pytest.param({"queries": ["whales"], "webhook_url": "file:///etc/passwd"}, id="webhook-file"),
]


@pytest.mark.parametrize("body", BATCH_INVALID_BODIES)
def test_invalid_batch_body_is_4xx(api, hybrid, recorder, body):
    from apps.agent.models import Batch

    batch_url = _batch_create_url()
    assert batch_url is not None, "the batch endpoint is not routed"
    before, batches = AgentJob.objects.count(), Batch.objects.count()

    response = post_raw(api, batch_url, json.dumps(body))

    assert_error_shape(response, (400, 404, 422))
    assert_nothing_happened(recorder, before)
    assert Batch.objects.count() == batches


def test_unknown_fields_are_named_in_the_details(api, recorder):
    top = api.post(JOBS, {"query": "whales", "priority": 1, "owner": 2}, format="json")
    nested = api.post(JOBS, {"query": "whales", "filters": {"colour": "red"}}, format="json")

    assert assert_error_shape(top, 400, "validation_error")["error"]["details"] == {
        "owner": ["Unknown field."],
        "priority": ["Unknown field."],
    }
    assert assert_error_shape(nested, 400, "validation_error")["error"]["details"] == {
        "filters": {"colour": ["Unknown field."]}
    }


# --- headers ---------------------------------------------------------------------------------------------

BAD_HEADERS = [
    pytest.param({"HTTP_IDEMPOTENCY_KEY": "k" * 201}, id="idempotency-key-too-long"),
    pytest.param({"HTTP_IDEMPOTENCY_KEY": "key\x00nul"}, id="idempotency-key-nul"),
    pytest.param({"HTTP_IDEMPOTENCY_KEY": "key\nnewline"}, id="idempotency-key-newline"),
    pytest.param({"HTTP_X_LLM_API_KEY": "sk-\x00nul"}, id="byo-key-nul"),
    pytest.param({"HTTP_X_LLM_API_KEY": "sk-\r\nInjected: header"}, id="byo-key-crlf"),
    pytest.param({"HTTP_X_LLM_API_KEY": "k" * 5000}, id="byo-key-huge"),
]


@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_hostile_headers_are_400(api, hybrid, recorder, headers):
    """Header values reach Redis, the database or an outbound Authorization header: refuse odd ones."""
    before = AgentJob.objects.count()
    extra = {"HTTP_X_LLM_API_KEY": CANARY_KEY, **headers}

    response = api.generic(
        "POST", JOBS, json.dumps({"query": "whales"}), content_type="application/json", **extra
    )

    assert_error_shape(response, 400, "invalid_header")
    assert_nothing_happened(recorder, before)


# --- hostile webhook URLs ----------------------------------------------------------------------------------

HOSTILE_WEBHOOK_URLS = [
    ("http://127.0.0.1:8000/hook", "loopback"),
    ("http://localhost/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://0x7f.1/hook", "non_canonical_ip"),
    ("http://2130706433/hook", "non_canonical_ip"),
    ("http://[::ffff:127.0.0.1]/hook", "ipv4_mapped_ipv6"),
    ("http://169.254.169.254/latest/meta-data/", "metadata_address"),
    ("http://10.0.0.5/hook", "private_address"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://user:pw@93.184.216.34/hook", "userinfo_not_allowed"),
    ("file:///etc/passwd", "scheme_not_allowed"),
    ("gopher://127.0.0.1:6379/_FLUSHALL", "scheme_not_allowed"),
    ("javascript:alert(1)", "scheme_not_allowed"),
    ("http://93.184.216.34/hook\r\nX-Injected: 1", "invalid_url"),
    ("http://127.0.0.1\\@93.184.216.34/hook", "invalid_url"),
    ("http://93.184.216.34:99999/hook", "invalid_port"),
]


@pytest.mark.parametrize(("url", "reason"), HOSTILE_WEBHOOK_URLS)
def test_hostile_webhook_url_is_400(api, hybrid, recorder, url, reason):
    before = AgentJob.objects.count()

    response = post_raw(api, JOBS, json.dumps({"query": "whales", "webhook_url": url}))

    body = assert_error_shape(response, 400, "webhook_url_rejected")
    assert body["error"]["details"] == {"field": "webhook_url", "reason": reason}
    assert_nothing_happened(recorder, before)


@pytest.mark.parametrize(
    "url",
    ["http://" + "a" * 2100 + ".com/", "http://93.184.216.34/ho\x00ok", 12345, ["http://93.184.216.34/"]],
)
def test_webhook_url_of_wrong_type_or_length_is_400(api, hybrid, recorder, url):
    before = AgentJob.objects.count()

    response = post_raw(api, JOBS, json.dumps({"query": "whales", "webhook_url": url}))

    assert_error_shape(response, 400)
    assert_nothing_happened(recorder, before)


def test_valid_request_is_accepted_and_enqueued_once(api, hybrid, recorder):
    """The control: the same client, headers and recorder accept a good request and publish one task."""
    before = AgentJob.objects.count()

    with mock.patch("django.db.transaction.on_commit", lambda fn, *a, **k: fn()):
        response = post_raw(api, JOBS, json.dumps({"query": "whales", "top_k": 3}))

    assert response.status_code == 202, response.content
    assert AgentJob.objects.count() == before + 1
    assert recorder == ["agent.job_run"]
