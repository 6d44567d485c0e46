"""A job's live events (docs/api.md, "Waiting and streaming"): one Redis Stream per job.

Writers (the API when a job is accepted, the worker while it runs, whoever ends it) append entries with
XADD, trimmed to about `AGENT_EVENTS_MAXLEN` entries, and renew the key's expiry
(`AGENT_EVENTS_RETENTION_SEC`) in the same round trip. Entry ids are the events' SSE ids: ordered, unique,
and what a client sends back as `Last-Event-ID`. Readers (the async wait and stream views) block on XREAD,
so a waiting client costs a Redis read, not a database query loop.

Events are a view, the job row stays the truth: writing one never fails a job (Redis errors are logged and
dropped), the final `job` event's payload is read from the database when it is served, and the history of
an ended job whose stream expired is rebuilt from its row and trace (`history_rebuild`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings

from agent.pipeline import llm_done_data
from apps.agent.models import AgentJob, JobStatus
from core.errors import ValidationFailed

logger = logging.getLogger(__name__)

#: The names of the events, in the order a run produces them (docs/api.md lists their payloads).
EVENT_NAMES = ("queued", "started", "retrieval", "llm.delta", "llm.done", "degraded", "job")
#: The last event of every job; its payload is the job's GET payload, read when it is served.
FINAL_EVENT = "job"
TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
#: Ids of events rebuilt from the database once the stream expired: 0-1, 0-2, ... (below any real id).
REBUILT_PREFIX = "0-"
#: The longest `?wait=` a client may ask for (docs/api.md).
WAIT_MAX_SEC = 60.0
#: Redis connections an API process may hold for open waits and streams (one each while it blocks).
MAX_BLOCKING_CONNECTIONS = 50_000
_EVENT_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}", re.ASCII)
#: Redis stream ids are two unsigned 64-bit integers: a larger one is refused by XREAD at every read.
_EVENT_ID_PART_MAX = 2**64 - 1


@dataclasses.dataclass(frozen=True)
class Event:
    id: str
    name: str
    data: dict[str, Any]


def stream_key(job_id: uuid.UUID | str) -> str:
    return f"agent:job-events:{job_id}"


def end_key(job_id: uuid.UUID | str) -> str:
    """The id of the job's final event, set (with the stream's expiry) by whoever appended it: only one
    is ever appended, and a reader knows where the job's events end whatever came after (a superseded
    attempt that woke up late)."""
    return f"agent:job-events:{job_id}:end"


def event_id_parse(value: str | None, *, field: str = "last_event_id") -> str | None:
    """A `Last-Event-ID` as given by a client: None when empty; `ValidationFailed` when malformed."""
    value = (value or "").strip()
    if not value:
        return None
    if not _EVENT_ID.fullmatch(value) or any(int(part) > _EVENT_ID_PART_MAX for part in value.split("-")):
        raise ValidationFailed(
            "The last event id must look like 1764636000123-0.",
            details={field: ["An event id is two integers (each below 2**64) joined by '-'."]},
        )
    return value


# --- writing (sync: API views and the worker) ----------------------------------------------------------

# The writers below never raise, whatever redis-py raises. Besides its own errors, a
# connection that breaks during its handshake can surface as ValueError ("I/O operation on closed file")
# or AttributeError from inside redis-py (8.1, under a burst of first requests: a 500 on POST found by
# bench/concurrency.py), so they catch every exception and log its type.

_sync_clients: dict[str, redis.Redis] = {}


def _new_sync_client(url: str) -> redis.Redis:
    # Short timeouts: a hung Redis must delay a job by seconds at most, never stop it.
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2, decode_responses=True)


def _new_async_client(url: str) -> aioredis.Redis:
    # Reads block on purpose (XREAD BLOCK, at most a heartbeat or a wait): the socket timeout (redis-py's
    # default is 5 s) must outlast the longest block.
    # Each open wait or stream holds one connection while it blocks: redis-py's default pool (100
    # connections) would cap them at 100 per process (measured by bench/live.py). The real bounds are the
    # process's open files and Redis' maxclients (docs/operations.md).
    timeout = max(settings.AGENT_EVENTS_HEARTBEAT_SEC, WAIT_MAX_SEC) + 15
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=timeout,
        decode_responses=True,
        max_connections=MAX_BLOCKING_CONNECTIONS,
    )


def _client() -> redis.Redis:
    url = settings.AGENT_EVENTS_REDIS_URL
    client = _sync_clients.get(url)
    if client is None:
        client = _sync_clients[url] = _new_sync_client(url)
    return client


def _encode(name: str, data: dict[str, Any]) -> dict[str, str]:
    return {"e": name, "d": json.dumps(data, separators=(",", ":"), default=str)}


def events_append(*, items: Sequence[tuple[uuid.UUID | str, str, dict[str, Any]]]) -> list[str]:
    """Append (job id, event name, data) items in one round trip. Returns the new ids ([] if Redis failed).

    Never raises: the job goes on without its live events (clients still get the final state).
    """
    if not items:
        return []
    pipe = _client().pipeline(transaction=False)
    keys = set()
    for job_id, name, data in items:
        key = stream_key(job_id)
        keys.add(key)
        pipe.xadd(key, _encode(name, data), maxlen=settings.AGENT_EVENTS_MAXLEN, approximate=True)
    for key in keys:
        pipe.expire(key, settings.AGENT_EVENTS_RETENTION_SEC)
    try:
        replies = pipe.execute()
    except Exception as exc:  # never raises: see "The writers below" above
        logger.warning("could not write %d job event(s): %s", len(items), type(exc).__name__)
        return []
    return [str(reply) for reply in replies[: len(items)]]


def event_append(*, job_id: uuid.UUID | str, name: str, data: dict[str, Any]) -> str | None:
    """Append one event; returns its id, or None when Redis failed (see `events_append`)."""
    ids = events_append(items=[(job_id, name, data)])
    return ids[0] if ids else None


def jobs_queued(*, job_ids: Sequence[uuid.UUID | str]) -> None:
    """The `queued` event of newly accepted jobs (written before their task is published)."""
    events_append(items=[(job_id, "queued", {"status": JobStatus.QUEUED.value}) for job_id in job_ids])


def events_forget(*, job_ids: Sequence[uuid.UUID | str]) -> int:
    """Delete the event streams of these jobs (retention purges them); returns how many existed.

    Never raises: a stream left behind expires by itself after `AGENT_EVENTS_RETENTION_SEC`.
    """
    if not job_ids:
        return 0
    try:
        pipe = _client().pipeline(transaction=False)
        pipe.delete(*(stream_key(job_id) for job_id in job_ids))
        pipe.delete(*(end_key(job_id) for job_id in job_ids))
        return int(pipe.execute()[0])
    except Exception as exc:  # never raises: see "The writers below" above
        logger.warning("could not delete %d job event stream(s): %s", len(job_ids), type(exc).__name__)
        return 0


def events_count(*, job_ids: Sequence[uuid.UUID | str]) -> int:
    """How many of these jobs still have an event stream (0 when Redis cannot say)."""
    if not job_ids:
        return 0
    try:
        return int(_client().exists(*(stream_key(job_id) for job_id in job_ids)))
    except Exception:  # never raises: see "The writers below" above
        return 0


# KEYS: the stream, its end key. ARGV: event name, data, maxlen, ttl. Appends the final event unless it
# was appended already (the worker's commit hook and a reader's repair can race): the new id, or false.
_APPEND_FINAL = """
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[1], 'd', ARGV[2])
redis.call('SET', KEYS[2], id, 'EX', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return id
"""


def job_ended(*, job_id: uuid.UUID | str, status: str) -> bool | None:
    """Append the final `job` event, once: called after the terminal transaction commits (it wakes the
    waiters), and by a reader that finds an ended job without it (its append failed).

    Returns True when it appended it, False when the job's final event had been appended already (by the
    other caller), None when Redis failed (never raises, see "The writers below").
    """
    script = _client().register_script(_APPEND_FINAL)  # local only: calls run EVALSHA (loaded once)
    fields = _encode(FINAL_EVENT, {"status": status})
    args = [fields["e"], fields["d"], settings.AGENT_EVENTS_MAXLEN, settings.AGENT_EVENTS_RETENTION_SEC]
    try:
        return bool(script(keys=[stream_key(job_id), end_key(job_id)], args=args))
    except Exception as exc:  # never raises: see "The writers below" above
        logger.warning("could not write a job's final event: %s", type(exc).__name__)
        return None


class AttemptEvents:
    """The events of one attempt of a job, as the pipeline reports them (`__call__` is its `on_event`).

    Every payload carries `attempt`. Answer text that arrives within `AGENT_EVENTS_DELTA_FLUSH_MS` of the
    last written delta is held and written with the next delta or event (`flush()` writes what is held):
    a model or the stub producing tokens in a burst costs one Redis write, not one per token.
    """

    def __init__(self, *, job_id: uuid.UUID | str, attempt: int):
        self.job_id = job_id
        self.attempt = attempt
        self._held: list[str] = []
        self._last_write = 0.0
        self._interval = settings.AGENT_EVENTS_DELTA_FLUSH_MS / 1000

    def __call__(self, name: str, data: dict[str, Any]) -> None:
        if name == "llm.delta":
            self._held.append(data["text"])
            if time.monotonic() - self._last_write >= self._interval:
                self.flush()
            return
        items = self._held_items()
        items.append((self.job_id, name, {"attempt": self.attempt, **data}))
        events_append(items=items)

    def flush(self) -> None:
        events_append(items=self._held_items())

    def _held_items(self) -> list[tuple[uuid.UUID | str, str, dict[str, Any]]]:
        if not self._held:
            return []
        text, self._held = "".join(self._held), []
        self._last_write = time.monotonic()
        return [(self.job_id, "llm.delta", {"attempt": self.attempt, "text": text})]


# --- rebuilding the history of an ended job from the database ------------------------------------------


def history_rebuild(*, job: AgentJob) -> list[Event]:
    """The events of an ended job as far as its row and its last attempt's trace tell them.

    Ids are 0-1, 0-2, ...; the final `job` event has data {"status"} like a live one.
    """
    steps = {step.name: step for step in job.trace_steps.filter(attempt=job.attempts).order_by("position")}
    attempt = job.attempts
    items: list[tuple[str, dict[str, Any]]] = [("queued", {"status": JobStatus.QUEUED.value})]
    if attempt:
        items.append(("started", {"attempt": attempt}))
    result = job.result or {}
    retrieved = steps.get("exact_search") or steps.get("retrieve")
    if retrieved is not None and not retrieved.error:
        books = [
            {key: row.get(key) for key in ("id", "title", "author", "year", "score")}
            for row in result.get("results", [])
        ]
        source = "exact" if retrieved.name == "exact_search" else "vector"
        items.append(("retrieval", {"attempt": attempt, "source": source, "books": books}))
    if "retrieve" in steps and steps["retrieve"].error:
        items.append(
            (
                "degraded",
                {"attempt": attempt, "why": "vector_store_unavailable", "error": steps["retrieve"].error},
            )
        )
    llm = steps.get("llm")
    if llm is not None:
        if not llm.error and result.get("message"):
            items.append(("llm.delta", {"attempt": attempt, "text": result["message"]}))
        items.append(("llm.done", {"attempt": attempt, **llm_done_data(answer_from_step(llm))}))
        if llm.error:
            items.append(("degraded", {"attempt": attempt, "why": "llm_failed", "error": llm.error}))
    items.append((FINAL_EVENT, {"status": job.status}))
    return [Event(f"{REBUILT_PREFIX}{n}", name, data) for n, (name, data) in enumerate(items, start=1)]


def answer_from_step(step: Any) -> dict[str, Any]:
    """The parts of an LLM result dict that a stored `llm` trace step keeps."""
    return {
        "prompt_tokens": step.prompt_tokens,
        "completion_tokens": step.completion_tokens,
        "usage_estimated": bool((step.outputs or {}).get("usage_estimated")),
        "cost_usd": step.cost_usd,
        "error": step.error,
    }


def _after(events: list[Event], last_id: str | None) -> list[Event]:
    """Rebuilt events after `last_id`; an id that is not one of them (a live id) gets the final event only."""
    if last_id is None:
        return events
    ids = [event.id for event in events]
    if last_id in ids:
        return events[ids.index(last_id) + 1 :]
    return events[-1:]


# --- reading (async: the wait and stream views) ---------------------------------------------------------

_async_clients: dict[int, tuple[asyncio.AbstractEventLoop, str, aioredis.Redis]] = {}


def _async_client() -> aioredis.Redis:
    """A client of this event loop (redis.asyncio connections belong to the loop that opened them)."""
    loop = asyncio.get_running_loop()
    url = settings.AGENT_EVENTS_REDIS_URL
    for key in [k for k, (other, _, _) in _async_clients.items() if other.is_closed()]:
        del _async_clients[key]
    entry = _async_clients.get(id(loop))
    if entry is None or entry[1] != url:
        entry = _async_clients[id(loop)] = (loop, url, _new_async_client(url))
    return entry[2]


async def last_id(*, job_id: uuid.UUID | str) -> str | None:
    """The id of the job's newest event ("0-0" when there is none); None when Redis cannot be read."""
    try:
        newest = await _async_client().xrevrange(stream_key(job_id), count=1)
    except redis.RedisError as exc:
        logger.warning("could not read job events: %s", type(exc).__name__)
        return None
    return newest[0][0] if newest else "0-0"


async def end_wait(
    *,
    job_id: uuid.UUID | str,
    after: str,
    timeout: float,
    job_status: Callable[[], Any] | None = None,
) -> bool:
    """Block until the job's final event is appended after `after`, or `timeout` seconds pass.

    Returns whether the job ended. No database loop: a worker's terminal commit appends the event. Only
    every `AGENT_EVENTS_HEARTBEAT_SEC` without it is `job_status()` (the view's database read) asked
    whether the job ended without its final event reaching Redis (its write failed): then that event is
    appended now (`job_ended`, for the other readers too) and the wait ends.
    """
    client = _async_client()
    key = stream_key(job_id)
    end = time.monotonic() + timeout
    cursor = after
    while (left := end - time.monotonic()) > 0:
        block = min(left, settings.AGENT_EVENTS_HEARTBEAT_SEC)
        try:
            reply = await client.xread({key: cursor}, count=100, block=max(1, int(block * 1000)))
        except redis.RedisError as exc:
            logger.warning("could not read job events: %s", type(exc).__name__)
            return False
        for _key, entries in reply or []:
            for entry_id, fields in entries:
                cursor = entry_id
                if fields.get("e") == FINAL_EVENT:
                    return True
        if not reply and job_status is not None:
            status = await job_status()
            if status in TERMINAL_STATUSES:
                await asyncio.to_thread(job_ended, job_id=job_id, status=status)
                return True
    return False


async def event_stream(
    *,
    job_id: uuid.UUID | str,
    after: str | None,
    job_status: Callable[[], Any],
    job_history: Callable[[], Any],
    final_payload: Callable[[], Any],
) -> AsyncIterator[Event | None]:
    """The job's events after `after`, ending with the final `job` event; None stands for a heartbeat.

    `job_status()`, `job_history()` and `final_payload()` are awaitables' factories given by the view
    (database reads run in its thread): the job's status, its rebuilt history (`history_rebuild`) and its
    GET payload. The stream is read with XREAD BLOCK; every `AGENT_EVENTS_HEARTBEAT_SEC` without an event
    yields a heartbeat and asks the database whether the job ended without its final event reaching Redis
    (Redis was down then): if so, that event is appended now, so every reader sees the same id. A client
    that resumes after the final event gets nothing more: the stream closes at once.
    """
    client = _async_client()
    key = stream_key(job_id)
    block_ms = max(1, int(settings.AGENT_EVENTS_HEARTBEAT_SEC * 1000))
    cursor = after if after and not after.startswith(REBUILT_PREFIX) else "0-0"
    newest = await _newest(client, key)
    if newest is None or newest[1] == FINAL_EVENT or after:
        status = await job_status()
        if status in TERMINAL_STATUSES:
            if newest is None:  # expired (or lost): rebuilt from the database
                for event in _after(await job_history(), after):
                    yield await _served(event, final_payload)
                return
            final_id = await _final_id(client, job_id) or (newest[0] if newest[1] == FINAL_EVENT else None)
            if final_id is not None and _id_key(final_id) <= _id_key(cursor):
                return  # the client has seen the end
    while True:
        try:
            reply = await client.xread({key: cursor}, count=500, block=block_ms)
        except redis.RedisError as exc:
            logger.warning("could not read job events: %s", type(exc).__name__)
            reply = None
            await asyncio.sleep(1)
        if not reply:
            yield None
            status = await job_status()
            if status in TERMINAL_STATUSES:
                newest = await _newest(client, key)
                if newest is None or newest[1] != FINAL_EVENT:
                    written = await asyncio.to_thread(job_ended, job_id=job_id, status=status)
                    if written is False:
                        # Its final event exists, and this reader is past it (it would have ended there):
                        # what came after is a superseded attempt's, never the job's.
                        return
                elif _id_key(newest[0]) <= _id_key(cursor):
                    return
            continue
        for _key, entries in reply:
            for entry_id, fields in entries:
                cursor = entry_id
                event = Event(entry_id, fields.get("e", ""), json.loads(fields.get("d") or "{}"))
                yield await _served(event, final_payload)
                if event.name == FINAL_EVENT:
                    return


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def _final_id(client: aioredis.Redis, job_id: uuid.UUID | str) -> str | None:
    """The id of the job's final event (`end_key`); None when there is none or Redis cannot say."""
    try:
        return await client.get(end_key(job_id))
    except redis.RedisError:
        return None


async def _newest(client: aioredis.Redis, key: str) -> tuple[str, str] | None:
    """(id, event name) of the stream's newest entry; None when the stream does not exist (or Redis
    cannot be read: the caller then treats the job as having no live events)."""
    try:
        entries = await client.xrevrange(key, count=1)
    except redis.RedisError:
        return None
    return (entries[0][0], entries[0][1].get("e", "")) if entries else None


async def _served(event: Event, final_payload: Callable[[], Any]) -> Event:
    if event.name != FINAL_EVENT:
        return event
    return Event(event.id, event.name, await final_payload())


def sse_format(event: Event | None, *, encode: Callable[[Any], bytes]) -> bytes:
    """One event in the text/event-stream format (None: a heartbeat comment)."""
    if event is None:
        return b": ping\n\n"
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event.id.encode(), event.name.encode(), encode(event.data))
