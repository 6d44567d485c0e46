"""`?wait=` and the job event stream with eager tasks, fakeredis and the test client (the views are async;
the real ASGI server, Redis and worker are in tests/e2e/test_live_e2e.py)."""

from __future__ import annotations

import json
import time
import uuid
import warnings

import pytest

from apps.agent.models import AgentJob, JobStatus
from apps.agent.services import job_events
from apps.agent.services import jobs as job_services

pytestmark = pytest.mark.django_db

URL = "/api/agent/jobs"


def finished_job(api, capture, query="books about whales") -> str:
    with capture(execute=True):
        response = api.post(URL, {"query": query, "top_k": 2}, format="json")
    assert response.status_code == 202
    return response.json()["id"]


def parse_sse(response) -> list[dict]:
    assert response["Content-Type"].startswith("text/event-stream")
    with warnings.catch_warnings():  # the sync test client consumes the async stream whole
        warnings.simplefilter("ignore")
        body = b"".join(response).decode()
    events = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if fields:
            events.append({**fields, "data": json.loads(fields["data"])})
    return events


# "1_0" and Arabic-Indic digits are numbers to Python's float(), not to a client reading the docs.
@pytest.mark.parametrize("value", ["abc", "-1", "61", "nan", "inf", "1e9", "1_0", "\u0661", "0x10", "+5"])
def test_bad_wait_is_400_in_the_error_shape(api, store, django_capture_on_commit_callbacks, value):
    job_id = finished_job(api, django_capture_on_commit_callbacks)
    response = api.get(f"{URL}/{job_id}", {"wait": value})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert "wait" in response.json()["error"]["details"]


def test_wait_on_an_ended_job_answers_at_once(api, store, django_capture_on_commit_callbacks):
    job_id = finished_job(api, django_capture_on_commit_callbacks)
    started = time.monotonic()
    response = api.get(f"{URL}/{job_id}", {"wait": "30"})
    assert time.monotonic() - started < 2
    assert response.status_code == 200
    assert response.json() == api.get(f"{URL}/{job_id}").json()
    assert "Retry-After" not in response


def test_wait_ends_with_the_current_state(api, user):
    job, _ = job_services.job_create(owner=user, query="whales", options=_options(), enqueue=False)
    started = time.monotonic()
    response = api.get(f"{URL}/{job.id}", {"wait": "0.3"})
    assert 0.25 <= time.monotonic() - started < 5
    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert response["Retry-After"] == "1"


def test_wait_and_events_are_owner_scoped(api, other_api, store, django_capture_on_commit_callbacks, client):
    job_id = finished_job(api, django_capture_on_commit_callbacks)
    for path in (f"{URL}/{job_id}?wait=1", f"{URL}/{job_id}/events"):
        response = other_api.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        anonymous = client.get(path)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "not_authenticated"


@pytest.mark.parametrize("method", ["options", "head", "post", "delete"])
def test_the_stream_answers_get_only(api, other_api, store, django_capture_on_commit_callbacks, method):
    """DRF answers OPTIONS with a 200 without calling `get` (the owner check): that must not open the
    stream of someone else's job (or of no job)."""
    job_id = finished_job(api, django_capture_on_commit_callbacks)
    for client, path in ((other_api, f"{URL}/{job_id}/events"), (api, f"{URL}/{uuid.uuid4()}/events")):
        response = getattr(client, method)(path, HTTP_LAST_EVENT_ID="1-0")
        assert response.status_code == 405
        assert not response.streaming and "text/event-stream" not in response["Content-Type"]
        if method != "head":
            assert response.json()["error"]["code"] == "method_not_allowed"


def test_events_of_an_ended_job_are_its_whole_history(api, store, django_capture_on_commit_callbacks):
    job_id = finished_job(api, django_capture_on_commit_callbacks)
    response = api.get(f"{URL}/{job_id}/events", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-cache"
    events = parse_sse(response)

    names = [e["event"] for e in events]
    assert names[:3] == ["queued", "started", "retrieval"]
    assert names[-2:] == ["llm.done", "job"]
    assert set(names[3:-2]) == {"llm.delta"}
    job = api.get(f"{URL}/{job_id}").json()
    assert events[-1]["data"] == job
    assert "".join(e["data"]["text"] for e in events if e["event"] == "llm.delta") == job["message"]
    assert events[1]["data"] == {"attempt": 1}
    assert [b["id"] for b in events[2]["data"]["books"]] == ["1", "2"]
    assert events[-2]["data"]["usage"]["prompt_tokens"] == job["usage"]["prompt_tokens"]

    # Resume with the header or the query parameter: exactly what follows.
    second = events[1]["id"]
    by_header = parse_sse(api.get(f"{URL}/{job_id}/events", HTTP_LAST_EVENT_ID=second))
    by_query = parse_sse(api.get(f"{URL}/{job_id}/events", {"last_event_id": second}))
    assert [e["id"] for e in by_header] == [e["id"] for e in events[2:]] == [e["id"] for e in by_query]
    assert parse_sse(api.get(f"{URL}/{job_id}/events", HTTP_LAST_EVENT_ID=events[-1]["id"])) == []


def test_events_after_the_retention_are_rebuilt(api, store, django_capture_on_commit_callbacks):
    job_id = finished_job(api, django_capture_on_commit_callbacks)
    live = parse_sse(api.get(f"{URL}/{job_id}/events"))
    job_events._client().delete(job_events.stream_key(job_id))

    rebuilt = parse_sse(api.get(f"{URL}/{job_id}/events"))

    assert [(e["id"], e["event"]) for e in rebuilt] == [
        ("0-1", "queued"),
        ("0-2", "started"),
        ("0-3", "retrieval"),
        ("0-4", "llm.delta"),
        ("0-5", "llm.done"),
        ("0-6", "job"),
    ]
    for name in ("queued", "started", "retrieval", "llm.done", "job"):
        assert next(e["data"] for e in rebuilt if e["event"] == name) == next(
            e["data"] for e in live if e["event"] == name
        )
    tail = parse_sse(api.get(f"{URL}/{job_id}/events", HTTP_LAST_EVENT_ID="0-4"))
    assert [e["event"] for e in tail] == ["llm.done", "job"]
    # A live id the rebuilt history does not know: the final state only.
    final = parse_sse(api.get(f"{URL}/{job_id}/events", HTTP_LAST_EVENT_ID=live[2]["id"]))
    assert [e["event"] for e in final] == ["job"]


def test_degraded_runs_say_why(api, store, django_capture_on_commit_callbacks):
    store.fail = True
    job_id = finished_job(api, django_capture_on_commit_callbacks)
    events = parse_sse(api.get(f"{URL}/{job_id}/events"))
    degraded = [e["data"] for e in events if e["event"] == "degraded"]
    assert [d["why"] for d in degraded] == ["vector_store_unavailable"]
    assert degraded[0]["attempt"] == 1 and degraded[0]["error"]["code"]
    assert events[-1]["data"]["degraded"] is True
    assert next(e for e in events if e["event"] == "retrieval")["data"]["source"] == "exact"


@pytest.mark.parametrize(
    "value",
    # Non-ASCII digits, and a part above 2**64 - 1: Redis would refuse them at every read (an endless stream)
    ["nope", "12", "1-2-3", "-1-0", "\u0661-\u0660", "5-18446744073709551616", "99999999999999999999-0"],
)
def test_a_malformed_last_event_id_is_400(api, store, django_capture_on_commit_callbacks, value):
    job_id = finished_job(api, django_capture_on_commit_callbacks)
    for response in (
        api.get(f"{URL}/{job_id}/events", HTTP_LAST_EVENT_ID=value),
        api.get(f"{URL}/{job_id}/events", {"last_event_id": value}),
    ):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "validation_error"
        assert "last_event_id" in response.json()["error"]["details"]


def test_an_unknown_job_is_404(api):
    for path in (f"{URL}/{uuid.uuid4()}?wait=1", f"{URL}/{uuid.uuid4()}/events"):
        response = api.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_a_cancelled_queued_job_streams_queued_then_job(api, user, django_capture_on_commit_callbacks):
    job, _ = job_services.job_create(owner=user, query="whales", options=_options(), enqueue=False)
    job_events.jobs_queued(job_ids=[job.id])
    # The test runs inside a transaction: the cancel's commit hooks (the final event) run here, as after a
    # real commit. (Without them the stream still ended, at its first heartbeat, 15 s later.)
    with django_capture_on_commit_callbacks(execute=True):
        job_services.job_cancel(job=job)
    started = time.monotonic()
    events = parse_sse(api.get(f"{URL}/{job.id}/events"))
    assert time.monotonic() - started < 5
    assert [e["event"] for e in events] == ["queued", "job"]
    assert events[-1]["data"]["status"] == JobStatus.CANCELLED
    assert AgentJob.objects.get(id=job.id).status == JobStatus.CANCELLED


def test_the_api_runs_under_asgi_with_async_middleware(async_client, settings):
    """The whole middleware stack is async-capable: an async view gets no thread of its own, and the
    body-size limit still answers 413 in the error shape."""
    from asgiref.sync import async_to_sync, iscoroutinefunction

    from apps.core.http_errors import RequestSizeLimitMiddleware

    async def view(request):
        return None

    assert iscoroutinefunction(RequestSizeLimitMiddleware(view))
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    ping = async_to_sync(async_client.get)("/api/ping")
    assert ping.status_code == 200
    big = async_to_sync(async_client.post)(URL, data="x" * 2048, content_type="application/json")
    assert big.status_code == 413
    assert json.loads(big.content)["error"]["code"] == "request_too_large"


def _options():
    from agent.types import AgentOptions

    return AgentOptions(top_k=2)


def test_a_batch_jobs_answer_comes_as_one_delta_an_interactive_jobs_word_by_word(
    api, store, django_capture_on_commit_callbacks
):
    interactive_id = finished_job(api, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        batch = api.post("/api/agent/batches", {"queries": ["books about whales"]}, format="json")
    assert batch.status_code == 202
    batch_job_id = api.get(f"/api/agent/batches/{batch.json()['id']}").json()["items"][0]["job_id"]

    deltas = {}
    for job_id in (interactive_id, batch_job_id):
        events = parse_sse(api.get(f"{URL}/{job_id}/events"))
        job = api.get(f"{URL}/{job_id}").json()
        assert job["status"] == "succeeded" and events[-1]["data"] == job
        deltas[job_id] = [e["data"]["text"] for e in events if e["event"] == "llm.delta"]
        assert "".join(deltas[job_id]) == job["message"]  # the same answer either way
    assert len(deltas[interactive_id]) > 1  # the stub streams word by word
    assert len(deltas[batch_job_id]) == 1  # one plain call: its whole text at once


def test_a_job_get_that_does_not_wait_runs_the_plain_view_under_a_sync_handler(
    api, store, django_capture_on_commit_callbacks, monkeypatch
):
    """Under a sync handler (WSGI, the test client) the async live view would cost each GET a thread and an
    event loop (asgiref's AsyncToSync); `PlainUnlessOpenMiddleware` runs the DRF view instead."""
    from asgiref.sync import AsyncToSync

    job_id = finished_job(api, django_capture_on_commit_callbacks)
    calls = []
    real_call = AsyncToSync.__call__

    def counting_call(self, *args, **kwargs):
        calls.append(self)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(AsyncToSync, "__call__", counting_call)
    plain = api.get(f"{URL}/{job_id}")
    assert (plain.status_code, len(calls)) == (200, 0)
    # A GET that waits still goes through the live view, and answers the same
    waited = api.get(f"{URL}/{job_id}", {"wait": "5"})
    assert len(calls) == 1
    assert waited.json() == plain.json()
    # A missing job is a 404 in the one error shape through the plain view too
    missing = api.get(f"{URL}/{uuid.uuid4()}")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    assert len(calls) == 1
