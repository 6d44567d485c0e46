"""Scenario 9: a bring-your-own LLM key is used, and rests nowhere.

A unique canary key is sent in `X-LLM-API-Key` (cost mode hybrid, BYO keys allowed, in the API process
and in the workers) through every path a job can take: success; a provider 500 (retried, then a degraded
answer); a provider 401 whose error message echoes the key in full; a 429 then success; a worker SIGKILLed
in the middle of the LLM call, the job recovered by the sweep of a new worker; a cancel while queued and
a cancel while running; and the synchronous endpoint. Then every place a secret could come to rest is
searched for the canary (as text, hex and base64, since Celery message bodies are base64):

- the database: every row of every table;
- Redis: every key name and value of every database 0..15, once the jobs have ended;
- the worker logs, and this process's (the API's) log records at DEBUG, openai/httpx loggers included;
- Flower's task API (`/api/tasks`: arguments, results, tracebacks), Flower having watched the whole run;
- the job JSON (result, trace, errors) and job list, and the webhook bodies and headers received.

The canary must appear nowhere, and the key must have been used: every chat call the test server received
carried `Authorization: Bearer <canary>` (none fell back to the server key).

The canary deliberately does not look like an OpenAI key (`sk-...`): the pattern-based scrubbing must not
be what hides a leak; only the explicit handling of this key may.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import logging.config
import uuid

import httpx
import pytest
import redis as redis_lib

from apps.webhooks.testing import WebhookReceiver
from tests.e2e.harness import Flower, wait_for

pytestmark = [
    pytest.mark.security,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

TERMINAL = {"succeeded", "failed", "cancelled"}
JOB_TIMEOUT_SEC = 5
CHAT = "/v1/chat/completions"
FLOWER_AUTH = ("u", "p")


def needles(secret: str) -> list[bytes]:
    """The canary as it could appear in stored bytes: plain, hex, and base64 (std and url-safe) at every
    alignment (a base64 encoding of text that contains the secret contains one of these)."""
    raw = secret.encode()
    found = [raw, binascii.hexlify(raw)]
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * pad + raw + b"\0\0\0")
            # Keep only the characters whose 6 bits all come from the secret (not from its neighbours).
            start = -(-pad * 4 // 3)
            end = (pad + len(raw)) * 4 // 3
            found.append(encoded[start:end])
    return found


def leaks(blob: bytes | str, secret_needles: list[bytes]) -> list[bytes]:
    data = blob.encode(errors="replace") if isinstance(blob, str) else blob
    return [needle for needle in secret_needles if needle in data]


def test_needles_find_the_canary_in_every_encoding():
    """Guards the search itself."""
    secret = "lbr-canary-0123456789abcdef"
    found = needles(secret)
    for prefix in ("", "x", "xy", "xyz"):
        text = (prefix + f'{{"key": "{secret}"}}').encode()
        assert leaks(text, found)
        assert leaks(base64.b64encode(text), found)
        assert leaks(base64.urlsafe_b64encode(text), found)
        assert leaks(binascii.hexlify(text), found)
    assert not leaks(base64.b64encode(b"lbr-canary-0123456789abcdeX"), found[:1])


# --- searching the places a key could rest ---------------------------------------------------------------


def search_database(secret_needles) -> dict[str, int]:
    """{table: rows} of every table; fails on the first value holding the canary."""
    from django.db import connection

    rows_per_table = {}
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608 - table names
            rows = cursor.fetchall()
            rows_per_table[table] = len(rows)
            for row in rows:
                for value in row:
                    if isinstance(value, memoryview):
                        value = value.tobytes()
                    text = value if isinstance(value, bytes) else str(value)
                    assert not leaks(text, secret_needles), f"canary in table {table}: {row!r}"[:500]
    return rows_per_table


def _redis_value(client: redis_lib.Redis, key: bytes) -> list[bytes]:
    kind = client.type(key)
    try:
        if kind == b"string":
            return [client.get(key) or b""]
        if kind == b"hash":
            return [b for pair in client.hgetall(key).items() for b in pair]
        if kind == b"list":
            return client.lrange(key, 0, -1)
        if kind == b"set":
            return list(client.smembers(key))
        if kind == b"zset":
            return [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        if kind == b"stream":
            return [repr(entry).encode() for entry in client.xrange(key)]
    except redis_lib.ResponseError:  # another test changed the key's type under us
        return []
    return []


def search_redis(base_url: str, secret_needles) -> int:
    """Every key and value of databases 0..15; returns how many keys were read."""
    keys = 0
    for db in range(16):
        client = redis_lib.Redis.from_url(f"{base_url}/{db}")
        for key in client.scan_iter(count=1000):
            keys += 1
            assert not leaks(key, secret_needles), f"canary in a Redis key name in db {db}: {key!r}"
            for value in _redis_value(client, key):
                assert not leaks(value, secret_needles), f"canary in Redis db {db} key {key!r}"
    return keys


class Capture(logging.Handler):
    """Every log record of this process, formatted with its exception, at DEBUG."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def api_logs(monkeypatch):
    handler = Capture()
    root = logging.getLogger()
    # The HTTP client libraries at DEBUG too (the openai SDK logs its request options there); httpcore's
    # DEBUG lines are connection-state traces without headers, and would only slow the run.
    noisy = [logging.getLogger(name) for name in ("httpx", "openai", "celery", "kombu")]
    saved = (root.level, [logger.level for logger in noisy])

    def attach():
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        for logger in noisy:
            logger.setLevel(logging.DEBUG)

    # Django applies settings.LOGGING again when something in this process runs django.setup() (Celery's
    # Django fix-up does, the first time the app imports its task modules): that replaces the root
    # handlers. Capture again right after, so that every record of the process is still searched.
    configure = logging.config.dictConfig

    def reconfigured(config):
        configure(config)
        attach()

    monkeypatch.setattr(logging.config, "dictConfig", reconfigured)
    attach()
    yield handler
    root.removeHandler(handler)
    root.setLevel(saved[0])
    for logger, level in zip(noisy, saved[1], strict=True):
        logger.setLevel(level)


@pytest.fixture
def flower(stack):
    """Flower watching the broker from before the first worker starts (it sees every task event).

    Yields (url, log path)."""
    process = Flower(stack.env, auth=FLOWER_AUTH, log_name="security-flower")
    try:
        process.wait_ready()
        yield process.base, process.log_path
    finally:
        process.stop()


# --- the run ---------------------------------------------------------------------------------------------


class Run:
    def __init__(self, stack, client: httpx.Client, canary: str, hook_url: str):
        self.stack, self.client, self.canary, self.hook_url = stack, client, canary, hook_url
        self.jobs: dict[str, str] = {}  # path -> job id

    def submit(self, path: str, query: str = "a whaling captain obsessed with a white whale") -> str:
        response = self.client.post(
            "/api/agent/jobs",
            json={"query": query, "top_k": 3, "webhook_url": self.hook_url},
            headers={"X-LLM-API-Key": self.canary},
        )
        assert response.status_code == 202, response.text
        self.jobs[path] = response.json()["id"]
        return self.jobs[path]

    def job(self, job_id: str) -> dict:
        return self.client.get(f"/api/agent/jobs/{job_id}").json()

    def wait_terminal(self, job_id: str, timeout: float = 30.0) -> dict:
        def done():
            body = self.job(job_id)
            return body if body["status"] in TERMINAL else None

        return wait_for(done, timeout=timeout, interval=0.2, message=f"job {job_id} to end")

    def wait_llm_calls(self, count: int, timeout: float = 20.0) -> None:
        wait_for(
            lambda: len(self.stack.llm.requests(CHAT)) >= count,
            timeout=timeout,
            interval=0.05,
            message=f"{count} LLM calls",
        )


def test_byo_key_is_used_and_rests_nowhere(stack, token, settings, flower, api_logs, redis_url):
    from agent.config import CostMode
    from apps.agent.models import AgentJob

    canary = f"lbr-canary-{uuid.uuid4().hex}"
    secret_needles = needles(canary)
    # Hybrid with BYO keys, in this process (the API) and in the workers alike.
    settings.LLM = dataclasses.replace(settings.LLM, cost_mode=CostMode.HYBRID, allow_byo_key=True)
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.AGENT_JOB_TIMEOUT_SEC = float(JOB_TIMEOUT_SEC)
    settings.AGENT_RUNNING_GRACE_SEC = 1.0
    stack.env.update(
        LLM_COST_MODE="hybrid",
        LLM_ALLOW_BYO_KEY="true",
        WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
        AGENT_JOB_TIMEOUT_SEC=str(JOB_TIMEOUT_SEC),
        AGENT_RUNNING_GRACE_SEC="1",
        LOG_LEVEL="DEBUG",
        # Celery's per-task lines too (WARNING by default): the worker logs must show the jobs they cover.
        CELERY_TASK_LOG_LEVEL="DEBUG",
        # Events from the first task on (Flower would switch them on only at its next 5 s broadcast):
        # Flower must see every job's task for its silence about the key to mean something.
        CELERY_WORKER_SEND_TASK_EVENTS="true",
    )

    with (
        WebhookReceiver() as receiver,
        httpx.Client(
            base_url=stack.live_url, headers={"Authorization": f"Token {token}"}, timeout=30
        ) as client,
    ):
        run = Run(stack, client, canary, receiver.url)

        # Cancel while queued: no worker is running yet.
        queued = run.submit("cancel_queued")
        assert client.post(f"/api/agent/jobs/{queued}/cancel").json()["status"] == "cancelled"

        w0 = stack.start_worker(name="canary-w0")
        for path, control, expected_calls in [
            ("success", {}, 1),
            ("provider_500", {"fault": "500"}, 2),  # one retry (LLM_MAX_RETRIES=1), then degraded
            ("provider_401_echoes_key", {"fault": "401"}, 1),  # not retried
            ("retry_429_then_success", {"fault": "429", "fail_times": 1}, 2),
        ]:
            stack.llm.reset()
            stack.llm.control(**control)
            job = run.wait_terminal(run.submit(path))
            assert job["status"] == "succeeded", (path, job)
            assert len(stack.llm.requests(CHAT)) == expected_calls, path
            _assert_used_canary(stack, canary, expected_calls)
        stack.llm.reset()

        # Cancel while running: the LLM answers slowly; cancel once the call is in flight.
        stack.llm.control(latency_ms=2000)
        running = run.submit("cancel_running")
        run.wait_llm_calls(1)
        assert client.post(f"/api/agent/jobs/{running}/cancel").status_code == 202
        assert run.wait_terminal(running)["status"] == "cancelled"
        _assert_used_canary(stack, canary, 1)
        stack.llm.reset()

        # SIGKILL mid-LLM-call; a new worker with beat sweeps the abandoned attempt back and finishes it.
        stack.llm.control(latency_ms=60_000)
        killed = run.submit("worker_killed")
        run.wait_llm_calls(1)
        receiver.wait_for(len(run.jobs) - 1, timeout=20)  # w0 delivered the events of the jobs that ended
        w0.kill()
        stack.llm.control(latency_ms=0)
        stack.start_worker(
            name="canary-w1", beat=True, env={"AGENT_SWEEP_INTERVAL_SEC": "1", "AGENT_QUEUED_STALE_SEC": "2"}
        )
        job = run.wait_terminal(killed, timeout=JOB_TIMEOUT_SEC + 30)
        assert (job["status"], job["attempts"]) == ("succeeded", 2), job
        _assert_used_canary(stack, canary, 2)
        stack.llm.reset()

        # The synchronous endpoint: the key is used inside this (the API) process.
        sync = client.post(
            "/api/agent/",
            json={"query": "a whaling captain obsessed with a white whale", "top_k": 3},
            headers={"X-LLM-API-Key": canary},
        )
        assert sync.status_code == 200, sync.text
        assert sync.json()["cost"]["key_source"] == "user"
        _assert_used_canary(stack, canary, 1)

        # Every job ended and delivered its webhook event.
        bodies = {path: run.wait_terminal(job_id) for path, job_id in run.jobs.items()}
        received = receiver.wait_for(len(run.jobs), timeout=30)
        assert len({request.headers["webhook-id"] for request in received}) == len(run.jobs)
        listing = client.get("/api/agent/jobs?limit=100").json()
        flower_url, flower_log = flower
        tasks = httpx.get(f"{flower_url}/api/tasks", auth=FLOWER_AUTH, timeout=10)

    for worker in stack.workers:
        worker.stop()  # flushes the logs

    # The jobs recorded who paid, never the key.
    assert {job.key_source for job in AgentJob.objects.all()} == {"user"}
    assert {body["cost"]["mode"] for body in bodies.values()} == {"hybrid"}
    # Flower watched the run (or its silence would prove nothing).
    assert tasks.status_code == 200
    job_tasks = [t for t in tasks.json().values() if t.get("name") == "agent.job_run"]
    assert {eval_args(t) for t in job_tasks} >= set(run.jobs.values()) - {queued}
    # No key waits in the hand-off store once its job ended.
    cache = redis_lib.Redis.from_url(redis_url)
    assert [k for k in cache.scan_iter(match="*byo-key*")] == []

    # The search.
    assert not leaks(repr(bodies) + repr(listing) + sync.text, secret_needles), "canary in job JSON"
    for request in received:
        assert not leaks(request.body + repr(request.headers).encode(), secret_needles), "canary in a webhook"
    assert not leaks(tasks.text, secret_needles), "canary in Flower's task API"
    assert not leaks(flower_log.read_bytes(), secret_needles), "canary in Flower's log"
    for worker in stack.workers:
        log = worker.log()
        assert "Task agent.job_run" in log  # the log is the worker's, and it logged the jobs
        assert not leaks(log, secret_needles), f"canary in worker log {worker.log_path}"
    assert len(api_logs.lines) > 20
    leaked_lines = [line for line in api_logs.lines if leaks(line, secret_needles)]
    assert leaked_lines == [], leaked_lines[:3]
    tables = search_database(secret_needles)
    assert tables["agent_agentjob"] == len(run.jobs) and tables["agent_tracestep"] > 0
    assert search_redis(redis_url.rsplit("/", 1)[0], secret_needles) > 0


def eval_args(task: dict) -> str:
    """The job id a Flower task record was called with (`args` is shown as a repr, e.g. "['<id>']")."""
    args = task.get("args") or ""
    return args.strip("[]()',\" ")


def _assert_used_canary(stack, canary: str, count: int) -> None:
    """The key was really used: each chat call the provider received since the last reset carried it."""
    calls = stack.llm.requests(CHAT)
    assert len(calls) == count
    assert {call["headers"].get("Authorization") for call in calls} == {f"Bearer {canary}"}
