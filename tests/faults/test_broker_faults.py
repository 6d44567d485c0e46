"""Fault 3: the broker stopped during submission, and restarted during processing; Redis and RabbitMQ.

The documented behaviour (docs/reliability.md): with the broker down, POST still answers 202 because the
job row is durable; the job waits as `queued` and the sweep publishes it once the broker is back. A Redis
restart that loses queued messages is repaired the same way; RabbitMQ keeps them (durable queues,
persistent messages) and re-delivers the unacked ones.

Each test stops a broker of its own (a private redis-server, a private RabbitMQ node on other ports):
the machine's shared services are never restarted. Redis keeps the cache and results (the run's Redis
database) in both cases.
"""

from __future__ import annotations

import time

import pytest

from bench.brokers import PrivateRabbit, PrivateRedis
from tests.e2e.harness import delete_queues, point_celery_at, wait_for
from tests.faults.conftest import FAST_SWEEP, Elapsed, jobs_of, submit, wait_terminal

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def rabbit_node():
    """One private RabbitMQ node for the module (a start costs 5-30 s), removed at the end."""
    node = PrivateRabbit()
    node.start()
    yield node
    node.remove()


@pytest.fixture(params=["redis", "rabbitmq"])
def private_broker(request, stack, settings, tmp_path, monkeypatch):
    """A broker of this test's own that it may stop and start; the stack's Redis keeps cache and results."""
    from config.celery_app import app

    if request.param == "redis":
        server = PrivateRedis(tmp_path)
        server.start(new_port_on_failure=True)
        stack.env.update(REDIS_URL=server.url, CACHE_URL=server.url, CELERY_BROKER_URL=server.url)
        settings.CACHES = {
            "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": server.url}
        }
        result_url = server.url
    else:
        server = request.getfixturevalue("rabbit_node")
        if server.process is None or server.process.poll() is not None:
            server.start()
        stack.env.update(CELERY_BROKER_URL=server.url)
        result_url = stack.env["REDIS_URL"]
    settings.CELERY_BROKER_URL = server.url
    point_celery_at(app, server.url, monkeypatch, result_url=result_url)
    yield server
    for worker in stack.workers:  # before the broker goes: workers must not hang reconnecting
        worker.stop()
    if request.param == "redis":
        server.stop()
    else:
        delete_queues(server.url)  # the next test must not receive this one's messages


def test_broker_down_at_submission_job_is_accepted_and_swept_in_later(stack, client, private_broker):
    stack.start_worker(env=FAST_SWEEP, beat=True)
    private_broker.stop()

    with Elapsed() as submission:
        job_id = submit(client, "a detective on a snowbound train")
    assert submission.seconds < 10  # publishing gives up quickly; the request never hangs
    job = jobs_of([job_id])[job_id]
    assert job.status == "queued" and job.enqueued_at is None

    time.sleep(1)
    private_broker.start()  # same port: the worker and beat reconnect
    job = wait_terminal([job_id], timeout=90)[job_id]
    assert job.status == "succeeded"
    assert job.attempts == 1


def test_broker_restart_during_processing_every_job_ends(stack, client, private_broker, settings):
    settings.AGENT_JOB_TIMEOUT_SEC = 10.0
    stack.llm.control(latency_ms=1500)
    stack.start_worker(env=FAST_SWEEP, beat=True, concurrency=2)
    ids = [submit(client, f"space opera with empires {i}") for i in range(6)]
    wait_for(lambda: len(stack.llm.requests("/v1/chat/completions")) >= 2, timeout=20, message="jobs running")

    # Redis loses the 4 queued messages (no persistence); RabbitMQ keeps them on disk. Running jobs carry
    # on; their acks are lost with the connection, so RabbitMQ re-delivers them (the claim drops those).
    private_broker.stop()
    time.sleep(1)
    private_broker.start()

    jobs = wait_terminal(ids, timeout=120)
    assert {j.status for j in jobs.values()} == {"succeeded"}
    assert all(j.attempts >= 1 for j in jobs.values())
    # One answer per job: a single attempt left its trace, whatever was delivered twice.
    assert all(len({s.attempt for s in j.trace_steps.all()}) == 1 for j in jobs.values())
