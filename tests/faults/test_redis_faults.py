"""Fault 3: Redis stopped during submission, and restarted (losing its queues) during processing.

The documented behaviour (docs/reliability.md): with the broker down, POST still answers 202 because the
job row is durable; the job waits as `queued` and the sweep publishes it once Redis is back. A Redis
restart that loses queued messages is repaired the same way.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.harness import PrivateRedis, point_celery_at, wait_for
from tests.faults.conftest import FAST_SWEEP, Elapsed, jobs_of, submit, wait_terminal

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def private_redis(stack, settings, tmp_path, monkeypatch):
    from config.celery_app import app

    server = PrivateRedis(tmp_path)
    server.start(new_port_on_failure=True)
    stack.env.update(REDIS_URL=server.url, CACHE_URL=server.url)
    settings.CELERY_BROKER_URL = server.url
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": server.url}
    }
    point_celery_at(app, server.url, monkeypatch)
    yield server
    server.stop()


def test_broker_down_at_submission_job_is_accepted_and_swept_in_later(stack, client, private_redis):
    stack.start_worker(env=FAST_SWEEP, beat=True)
    private_redis.stop()

    with Elapsed() as submission:
        job_id = submit(client, "a detective on a snowbound train")
    assert submission.seconds < 10  # publishing gives up quickly; the request never hangs
    job = jobs_of([job_id])[job_id]
    assert job.status == "queued" and job.enqueued_at is None

    time.sleep(1)
    private_redis.start()  # same port: the worker and beat reconnect
    job = wait_terminal([job_id], timeout=60)[job_id]
    assert job.status == "succeeded"
    assert job.attempts == 1


def test_redis_restart_during_processing_every_job_ends(stack, client, private_redis, settings):
    settings.AGENT_JOB_TIMEOUT_SEC = 10.0
    stack.llm.control(latency_ms=1500)
    stack.start_worker(env=FAST_SWEEP, beat=True, concurrency=2)
    ids = [submit(client, f"space opera with empires {i}") for i in range(6)]
    wait_for(lambda: len(stack.llm.requests("/v1/chat/completions")) >= 2, timeout=20, message="jobs running")

    private_redis.stop()  # loses the 4 queued messages (no persistence), running jobs carry on
    time.sleep(1)
    private_redis.start()

    jobs = wait_terminal(ids, timeout=90)
    assert {j.status for j in jobs.values()} == {"succeeded"}
    assert all(j.attempts >= 1 for j in jobs.values())
