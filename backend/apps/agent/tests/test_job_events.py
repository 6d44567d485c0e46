"""The job event store (services/job_events.py) on fakeredis: ids, coalesced deltas, retention, failures."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from apps.agent.services import job_events
from core.errors import ValidationFailed


def entries(job_id):
    return [
        (fields["e"], fields["d"])
        for _id, fields in job_events._client().xrange(job_events.stream_key(job_id))
    ]


def test_append_sets_the_retention_and_returns_ordered_ids(settings):
    settings.AGENT_EVENTS_RETENTION_SEC = 120
    job_id = uuid.uuid4()
    first = job_events.event_append(job_id=job_id, name="queued", data={"status": "queued"})
    second = job_events.event_append(job_id=job_id, name="job", data={"status": "cancelled"})
    assert job_events._id_key(first) < job_events._id_key(second)
    assert 0 < job_events._client().ttl(job_events.stream_key(job_id)) <= 120


def test_deltas_within_the_flush_interval_are_written_together(settings):
    settings.AGENT_EVENTS_DELTA_FLUSH_MS = 60_000
    job_id = uuid.uuid4()
    events = job_events.AttemptEvents(job_id=job_id, attempt=2)
    events("started", {})
    for word in ("Read ", "Moby", "-Dick."):
        events("llm.delta", {"text": word})
    events("llm.done", {"usage": {}})

    written = entries(job_id)
    assert [name for name, _ in written] == ["started", "llm.delta", "llm.delta", "llm.done"]
    # The first delta goes at once (nothing written for a while); the burst after it waits for llm.done.
    assert written[1][1] == '{"attempt":2,"text":"Read "}'
    assert written[2][1] == '{"attempt":2,"text":"Moby-Dick."}'
    assert written[0][1] == '{"attempt":2}'


def test_without_an_interval_every_delta_is_written(settings):
    settings.AGENT_EVENTS_DELTA_FLUSH_MS = 0
    job_id = uuid.uuid4()
    events = job_events.AttemptEvents(job_id=job_id, attempt=1)
    for word in ("a ", "b ", "c"):
        events("llm.delta", {"text": word})
    assert [name for name, _ in entries(job_id)] == ["llm.delta"] * 3


def test_a_redis_failure_never_raises(monkeypatch, caplog):
    # Nothing listens there; no retries (redis-py's default backoff would make this test take 5 s).
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    monkeypatch.setattr(job_events, "_client", lambda: down)
    assert job_events.event_append(job_id=uuid.uuid4(), name="queued", data={}) is None
    assert "could not write 1 job event(s): ConnectionError" in caplog.text


class _BrokenInsideRedisPy(redis.Redis):
    """A client whose connection breaks the way redis-py 8.1 let it under a burst of first requests."""

    def pipeline(self, *args, **kwargs):
        pipe = super().pipeline(*args, **kwargs)

        def execute(*_args, **_kwargs):
            raise ValueError("I/O operation on closed file.")

        pipe.execute = execute
        return pipe

    def delete(self, *names):
        raise AttributeError("'NoneType' object has no attribute 'readline'")

    def exists(self, *names):
        raise AttributeError("'NoneType' object has no attribute 'readline'")


def test_an_error_from_inside_redis_py_never_raises_either(monkeypatch, caplog):
    monkeypatch.setattr(job_events, "_client", lambda: _BrokenInsideRedisPy(host="127.0.0.1", port=1))
    job_id = uuid.uuid4()
    assert job_events.events_append(items=[(job_id, "queued", {})]) == []
    assert "could not write 1 job event(s): ValueError" in caplog.text
    assert job_events.events_forget(job_ids=[job_id]) == 0
    assert job_events.events_count(job_ids=[job_id]) == 0


@pytest.mark.parametrize("value", ["", "  ", None])
def test_an_empty_last_event_id_is_none(value):
    assert job_events.event_id_parse(value) is None


@pytest.mark.parametrize("value", ["x", "1", "1-", "-1", "1-2-3", "1.5-0", "9" * 21 + "-0"])
def test_a_malformed_last_event_id_is_refused(value):
    with pytest.raises(ValidationFailed) as caught:
        job_events.event_id_parse(value)
    assert caught.value.code == "validation_error"


def test_the_final_event_is_appended_once_and_forgotten_with_the_stream():
    # The worker's commit hook and a reader's repair (its heartbeat found the job ended) can race.
    job_id = uuid.uuid4()
    assert job_events.job_ended(job_id=job_id, status="succeeded") is True
    assert job_events.job_ended(job_id=job_id, status="succeeded") is False
    assert [name for name, _ in entries(job_id)] == ["job"]

    assert job_events.events_forget(job_ids=[job_id]) == 1
    assert job_events._client().exists(job_events.end_key(job_id)) == 0


def _read(job_id, after, status="succeeded"):
    async def answer(value):
        return value

    async def read():
        stream = job_events.event_stream(
            job_id=job_id,
            after=after,
            job_status=lambda: answer(status),
            job_history=lambda: answer([]),
            final_payload=lambda: answer({"status": status}),
        )
        return [event async for event in stream]

    return asyncio.run(asyncio.wait_for(read(), timeout=5))


def test_a_reader_past_the_end_gets_nothing_more_whatever_was_written_after_it(settings):
    """A superseded attempt that woke up late wrote after the job's end: a client resuming after the
    `job` event gets no late event and no second `job` event; one reading from the start ends at it."""
    settings.AGENT_EVENTS_HEARTBEAT_SEC = 0.05
    job_id = uuid.uuid4()
    job_events.event_append(job_id=job_id, name="queued", data={"status": "queued"})
    job_events.job_ended(job_id=job_id, status="succeeded")
    job_events.event_append(job_id=job_id, name="llm.delta", data={"attempt": 1, "text": "late"})
    final_id = job_events._client().get(job_events.end_key(job_id))

    assert _read(job_id, after=final_id) == []
    assert [event.name for event in _read(job_id, after=None)] == ["queued", "job"]
    assert [name for name, _ in entries(job_id)] == ["queued", "job", "llm.delta"]


def test_a_wait_ends_when_the_job_ended_without_its_final_event(settings):
    """The final event's write failed (Redis refused it, reads work): the waiter learns the end from the
    database at the next heartbeat instead of waiting out its `wait`, and writes the event for the others."""
    settings.AGENT_EVENTS_HEARTBEAT_SEC = 0.05
    job_id = uuid.uuid4()
    queued = job_events.event_append(job_id=job_id, name="queued", data={"status": "queued"})

    async def ended():
        return "succeeded"

    async def wait():
        started = time.monotonic()
        seen = await job_events.end_wait(job_id=job_id, after=queued, timeout=5, job_status=ended)
        return seen, time.monotonic() - started

    seen, took = asyncio.run(wait())
    assert seen is True and took < 2
    assert [name for name, _ in entries(job_id)] == ["queued", "job"]
