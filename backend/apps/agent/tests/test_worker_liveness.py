"""Takeover of running attempts: only when past deadline + grace AND their worker process is gone (or hung).

Redis is fakeredis here; tests/faults (SIGKILL, poison job) and tests/faults/test_cluster.py prove it with
real workers on both brokers.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import pytest
from django.utils import timezone

from agent.types import AgentResult
from apps.agent.models import AgentJob, JobStatus
from apps.agent.services import job_execution, jobs, worker_liveness
from apps.agent.tests.factories import job_submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def liveness_redis(monkeypatch):
    import fakeredis

    client = fakeredis.FakeRedis()
    monkeypatch.setattr(worker_liveness, "redis_client", lambda: client)
    yield client
    worker_liveness.alive_stop()


@pytest.fixture
def published(monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(jobs, "job_enqueue", lambda *, job: sent.append(str(job.id)) or True)
    return sent


def _age(job, *, seconds: float) -> None:
    AgentJob.objects.filter(id=job.id).update(heartbeat_at=timezone.now() - timedelta(seconds=seconds))


def test_a_started_process_keeps_a_key_with_a_ttl_and_its_claims_carry_its_name(user, store, liveness_redis):
    assert worker_liveness.process_name() == ""
    name = worker_liveness.alive_start()

    assert name == f"{socket.gethostname()}:{os.getpid()}" == worker_liveness.process_name()
    key = worker_liveness.KEY_PREFIX + name
    assert 0 < liveness_redis.ttl(key) <= worker_liveness.ALIVE_TTL_SEC
    job = job_submit(user)
    assert job_execution.job_claim(job_id=job.id).claimed_by == name
    assert AgentJob.objects.get(id=job.id).claimed_by == name

    worker_liveness.alive_stop()
    assert liveness_redis.exists(key) == 0 and worker_liveness.process_name() == ""


def test_the_sweep_leaves_a_slow_attempt_of_a_live_worker_and_recovers_a_dead_ones(
    user, store, settings, liveness_redis, published
):
    settings.AGENT_RUNNING_GRACE_SEC = 5
    settings.AGENT_RUNNING_HUNG_SEC = 300
    name = worker_liveness.alive_start()
    slow = job_submit(user)
    job_execution.job_claim(job_id=slow.id)
    dead = job_submit(user, status=JobStatus.RUNNING, attempts=1, claimed_by="gone-host:1")
    for job in (slow, dead):
        _age(job, seconds=slow.timeout_sec + 60)  # well past deadline + grace

    counts = jobs.jobs_sweep()

    assert counts["recovered"] == 1 and published == [str(dead.id)]
    assert AgentJob.objects.get(id=slow.id).status == JobStatus.RUNNING
    # The slow attempt ends in its own time and its answer is kept: one attempt, succeeded.
    claimed = AgentJob.objects.get(id=slow.id)
    result = AgentResult(message="late but fine", results=[], actions=[], trace=[])
    assert job_execution._job_finish(claimed, 1, result) == JobStatus.SUCCEEDED
    stored = AgentJob.objects.get(id=slow.id)
    assert (stored.status, stored.attempts, stored.result["message"]) == ("succeeded", 1, "late but fine")
    assert stored.claimed_by == name


def test_a_live_workers_attempt_is_taken_over_once_it_is_hung(
    user, store, settings, liveness_redis, published
):
    settings.AGENT_RUNNING_GRACE_SEC = 5
    settings.AGENT_RUNNING_HUNG_SEC = 30
    worker_liveness.alive_start()
    job = job_submit(user)
    job_execution.job_claim(job_id=job.id)

    _age(job, seconds=job.timeout_sec + 5 + 20)  # past the grace, not yet hung
    assert jobs.jobs_sweep()["recovered"] == 0
    _age(job, seconds=job.timeout_sec + 5 + 31)
    assert jobs.jobs_sweep()["recovered"] == 1
    assert AgentJob.objects.get(id=job.id).status == JobStatus.QUEUED


def test_a_redelivered_message_does_not_take_over_a_live_attempt_but_does_a_dead_ones(
    user, store, settings, liveness_redis
):
    settings.AGENT_RUNNING_GRACE_SEC = 5
    name = worker_liveness.alive_start()
    job = job_submit(user)
    job_execution.job_claim(job_id=job.id)
    _age(job, seconds=job.timeout_sec + 60)

    assert job_execution.job_claim(job_id=job.id) is None
    assert AgentJob.objects.get(id=job.id).attempts == 1

    liveness_redis.delete(worker_liveness.KEY_PREFIX + name)  # the process died: its key expired
    taken = job_execution.job_claim(job_id=job.id)
    assert taken is not None and taken.attempts == 2


def test_when_redis_cannot_tell_a_stale_attempt_is_taken_over_as_before(
    user, store, settings, liveness_redis, published, monkeypatch
):
    settings.AGENT_RUNNING_GRACE_SEC = 5
    worker_liveness.alive_start()
    job = job_submit(user)
    job_execution.job_claim(job_id=job.id)
    _age(job, seconds=job.timeout_sec + 60)

    def down(*args, **kwargs):
        raise ConnectionError("redis down")

    monkeypatch.setattr(liveness_redis, "mget", down)
    assert jobs.jobs_sweep()["recovered"] == 1


def test_an_attempt_claimed_outside_a_worker_records_no_process_and_is_taken_over_when_stale(
    user, store, settings, liveness_redis
):
    settings.AGENT_RUNNING_GRACE_SEC = 5
    job = job_submit(user)
    assert job_execution.job_claim(job_id=job.id).claimed_by == ""
    _age(job, seconds=job.timeout_sec + 60)
    assert job_execution.job_claim(job_id=job.id).attempts == 2
