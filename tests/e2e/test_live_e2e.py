"""Waiting for a job and streaming its events, through the ASGI API server, a real Redis and real Celery
worker processes (docs/api.md, "Waiting and streaming")."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime

import httpx
import pytest
import redis as redis_lib

from tests.e2e.harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TERMINAL = {"succeeded", "failed", "cancelled"}
#: Sweep fast and presume an attempt lost soon after its deadline (as tests/faults does).
FAST_SWEEP = {"AGENT_SWEEP_INTERVAL_SEC": "1", "AGENT_RUNNING_GRACE_SEC": "1", "AGENT_QUEUED_STALE_SEC": "2"}


def read_events(client: httpx.Client, path: str, *, headers=None, on_event=None, timeout: float = 60.0):
    """Read an SSE stream to its end. Returns (events, pings): events as dicts with id, event and the
    decoded data. `on_event(event)` is called as each one arrives."""
    events, pings, current = [], 0, {}
    with client.stream("GET", path, headers=headers or {}, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(":"):
                pings += 1
                continue
            if line == "":
                if current:
                    current["data"] = json.loads(current["data"])
                    events.append(current)
                    if on_event is not None:
                        on_event(current)
                    current = {}
                continue
            field, _, value = line.partition(": ")
            current[field] = value
    return events, pings


def submit(client: httpx.Client, query: str) -> str:
    accepted = client.post("/api/agent/jobs", json={"query": query, "top_k": 3})
    assert accepted.status_code == 202, accepted.text
    return accepted.json()["id"]


@pytest.fixture
def api(stack, token):
    server = stack.start_api()
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Token {token}"}, timeout=30) as c:
        yield c


def test_wait_answers_within_ms_of_the_terminal_commit(stack, api):
    stack.llm.control(latency_ms=400)
    stack.start_worker()
    job_id = submit(api, "a whaling captain obsessed with a white whale")

    asked = time.monotonic()
    job = api.get(f"/api/agent/jobs/{job_id}", params={"wait": 20}).json()
    answered_at = time.time()

    assert job["status"] == "succeeded"
    assert time.monotonic() - asked >= 0.35  # it did wait for the LLM call
    finished = datetime.fromisoformat(job["timings"]["finished_at"]).timestamp()
    # finished_at is taken just before the terminal transaction; the answer follows its commit.
    assert answered_at - finished < 0.25, answered_at - finished
    assert "Retry-After" not in api.get(f"/api/agent/jobs/{job_id}", params={"wait": 5}).headers


def test_wait_ends_with_the_current_state_when_the_job_is_slower(stack, api):
    stack.llm.control(fault="hang", hang_sec=30)
    stack.start_worker()
    job_id = submit(api, "poesía de amor")

    asked = time.monotonic()
    response = api.get(f"/api/agent/jobs/{job_id}", params={"wait": 1.5})
    waited = time.monotonic() - asked

    assert response.status_code == 200
    assert response.json()["status"] in {"queued", "running"}
    assert response.headers["Retry-After"] == "1"
    assert 1.4 <= waited < 3.0


def test_stream_order_resume_from_every_id_and_history_after_the_end(stack, api, redis_url):
    stack.llm.control(stream_delay_ms=20)
    stack.start_worker()
    job_id = submit(api, "a whaling captain obsessed with a white whale")
    path = f"/api/agent/jobs/{job_id}/events"

    events, _ = read_events(api, path)

    names = [e["event"] for e in events]
    assert names[:3] == ["queued", "started", "retrieval"]
    assert names[-2:] == ["llm.done", "job"]
    assert set(names[3:-2]) == {"llm.delta"} and len(names[3:-2]) >= 2  # streamed in several pieces
    assert [e["data"].get("attempt") for e in events[1:-1]] == [1] * (len(events) - 2)
    ids = [tuple(map(int, e["id"].split("-"))) for e in events]
    assert ids == sorted(set(ids))  # ordered, none twice
    job = events[-1]["data"]
    assert job == api.get(f"/api/agent/jobs/{job_id}").json()  # the GET payload
    assert job["status"] == "succeeded"
    assert "".join(e["data"]["text"] for e in events if e["event"] == "llm.delta") == job["message"]
    assert "Moby-Dick" in [book["title"] for book in events[2]["data"]["books"]]
    done = events[-2]["data"]
    llm_step = next(step for step in job["trace"] if step["name"] == "llm")
    assert done["usage"]["prompt_tokens"] == llm_step["prompt_tokens"] > 0
    assert done["usage"]["estimated"] is False  # the provider's usage, from its last chunk
    calls = stack.llm.requests("/v1/chat/completions")
    assert calls[0]["body"]["stream"] is True
    assert calls[0]["body"]["stream_options"] == {"include_usage": True}

    # A client that connects after the end gets the whole history; one that resumes gets what follows.
    again, _ = read_events(api, path)
    assert [(e["id"], e["event"]) for e in again] == [(e["id"], e["event"]) for e in events]
    for index, event in enumerate(events):
        if index % 2:
            resumed, _ = read_events(api, path, headers={"Last-Event-ID": event["id"]})
        else:
            resumed, _ = read_events(api, f"{path}?last_event_id={event['id']}")
        if index == len(events) - 1:
            assert resumed == [], resumed
        else:
            assert [e["id"] for e in resumed] == [e["id"] for e in events[index + 1 :]]

    # After the retention the history is rebuilt from the job and its trace.
    redis_lib.Redis.from_url(redis_url).delete(f"agent:job-events:{job_id}")
    rebuilt, _ = read_events(api, path)
    assert [e["event"] for e in rebuilt] == ["queued", "started", "retrieval", "llm.delta", "llm.done", "job"]
    assert [e["id"] for e in rebuilt] == [f"0-{n}" for n in range(1, 7)]
    assert rebuilt[3]["data"]["text"] == job["message"]
    assert rebuilt[4]["data"] == {**done, "attempt": 1}
    assert rebuilt[2]["data"] == events[2]["data"]
    resumed, _ = read_events(api, path, headers={"Last-Event-ID": "0-3"})
    assert [e["event"] for e in resumed] == ["llm.delta", "llm.done", "job"]


def test_heartbeats_keep_an_idle_stream_open(stack, token):
    stack.env["AGENT_EVENTS_HEARTBEAT_SEC"] = "0.3"
    server = stack.start_api()
    stack.llm.control(latency_ms=1500)
    stack.start_worker()
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Token {token}"}, timeout=30) as c:
        job_id = submit(c, "poesía de amor")
        events, pings = read_events(c, f"/api/agent/jobs/{job_id}/events")
    assert pings >= 2
    assert events[-1]["event"] == "job" and events[-1]["data"]["status"] == "succeeded"


def test_two_attempts_after_a_sigkill_are_told_apart(stack, api):
    from apps.agent.models import AgentJob

    stack.llm.control(stream_delay_ms=150)
    first = stack.start_worker()
    job_id = submit(api, "a whaling captain obsessed with a white whale")
    # The recorded deadline: the sweep presumes attempt 1 lost soon after its worker is killed.
    AgentJob.objects.filter(id=job_id).update(timeout_sec=8.0)
    streamed: list[dict] = []
    reader = threading.Thread(
        target=read_events,
        args=(api, f"/api/agent/jobs/{job_id}/events"),
        kwargs={"on_event": streamed.append},
        daemon=True,
    )
    reader.start()
    wait_for(lambda: any(e["event"] == "llm.delta" for e in streamed), timeout=30, message="a first delta")
    first.kill()
    stack.llm.control(stream_delay_ms=10)
    stack.start_worker(env=FAST_SWEEP, beat=True)
    reader.join(timeout=90)
    events = streamed

    job_row = AgentJob.objects.get(id=job_id)
    assert not reader.is_alive(), (job_row.status, job_row.attempts, [e["event"] for e in events])
    started = [e["data"]["attempt"] for e in events if e["event"] == "started"]
    assert started == [1, 2]
    names = [e["event"] for e in events]
    second = names[len(names) - names[::-1].index("started") :]
    assert second[0] == "retrieval" and second[-2:] == ["llm.done", "job"]
    job = events[-1]["data"]
    assert job["status"] == "succeeded" and job["attempts"] == 2
    # The deltas of attempt 2 alone make the stored answer; attempt 1's are marked as attempt 1.
    texts = {1: "", 2: ""}
    for e in events:
        if e["event"] == "llm.delta":
            texts[e["data"]["attempt"]] += e["data"]["text"]
    assert texts[2] == job["message"]
    assert texts[1] and job["message"].startswith(texts[1])


def test_cancel_mid_stream_stops_the_stream_and_the_call(stack, api):
    stack.llm.control(stream_delay_ms=200)
    stack.start_worker()
    job_id = submit(api, "a whaling captain obsessed with a white whale")
    cancelled_at = {}

    def cancel_on_first_delta(event):
        if event["event"] == "llm.delta" and not cancelled_at:
            cancelled_at["t"] = time.monotonic()
            assert api.post(f"/api/agent/jobs/{job_id}/cancel").status_code == 202

    events, _ = read_events(api, f"/api/agent/jobs/{job_id}/events", on_event=cancel_on_first_delta)
    ended = time.monotonic()

    assert events[-1]["event"] == "job"
    assert events[-1]["data"]["status"] == "cancelled"
    # The answer has ~30 words at 200 ms each; the cancel ended the call within a few chunks.
    assert ended - cancelled_at["t"] < 1.5
    deltas = "".join(e["data"]["text"] for e in events if e["event"] == "llm.delta")
    full = stack.llm.requests("/v1/chat/completions")
    assert len(full) == 1
    assert len(deltas.split()) < 10
    assert "llm.done" not in [e["event"] for e in events]


def test_provider_fault_mid_stream_degrades_and_the_stream_still_ends(stack, api):
    stack.llm.control(fault="stream_cut", stream_delay_ms=10)
    stack.start_worker()
    job_id = submit(api, "novela de realismo mágico en un pueblo")

    events, _ = read_events(api, f"/api/agent/jobs/{job_id}/events")

    names = [e["event"] for e in events]
    assert "llm.delta" in names
    assert names[-3:] == ["llm.done", "degraded", "job"]
    assert events[-3]["data"]["error"]["code"] in {"connection_error", "bad_response", "provider_error"}
    assert events[-2]["data"]["why"] == "llm_failed"
    job = events[-1]["data"]
    assert job["status"] == "succeeded" and job["degraded"] is True
    assert job["message"].startswith("No pude consultar el modelo")
    # Text had been streamed: no retry (it would be streamed twice).
    assert len(stack.llm.requests("/v1/chat/completions")) == 1


def test_owner_isolation_and_errors_on_the_live_views(stack, api, django_user_model):
    from rest_framework.authtoken.models import Token

    stack.start_worker()
    job_id = submit(api, "poesía de amor")
    other = Token.objects.create(user=django_user_model.objects.create_user(username="mallory-live")).key
    base = str(api.base_url)
    for path in (f"/api/agent/jobs/{job_id}/events", f"/api/agent/jobs/{job_id}?wait=1"):
        foreign = httpx.get(base + path, headers={"Authorization": f"Token {other}"}, timeout=10)
        assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "not_found"
        anonymous = httpx.get(base + path, timeout=10)
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "not_authenticated"
    bad = api.get(f"/api/agent/jobs/{job_id}/events", headers={"Last-Event-ID": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "validation_error"
    assert wait_for(
        lambda: api.get(f"/api/agent/jobs/{job_id}?wait=10").json()["status"] in TERMINAL, timeout=20
    )
