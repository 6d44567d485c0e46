"""Job services: the claim, attempts, the sweep."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.agent.models import AgentJob, JobStatus
from apps.agent.services import job_execution, jobs
from apps.agent.tests.factories import job_submit

pytestmark = pytest.mark.django_db


def test_second_delivery_does_nothing(user, store):
    job = job_submit(user)
    assert job_execution.job_run(job_id=job.id) == JobStatus.SUCCEEDED
    assert job_execution.job_run(job_id=job.id) is None
    job.refresh_from_db()
    assert job.attempts == 1
    assert job.trace_steps.count() == 4


def test_running_job_is_not_claimed_twice(user, store):
    job = job_submit(user)
    claimed = job_execution.job_claim(job_id=job.id)
    assert claimed is not None and claimed.status == JobStatus.RUNNING
    assert job_execution.job_claim(job_id=job.id) is None


def test_the_claim_moves_exactly_one_queued_row_and_returns_it_as_stored(user, other_user, store):
    job = job_submit(user)
    bystander = job_submit(other_user)
    before = timezone.now()

    claimed = job_execution.job_claim(job_id=str(job.id))  # as the task passes it: a string

    stored = AgentJob.objects.get(id=job.id)
    assert (stored.status, stored.attempts) == (JobStatus.RUNNING, 1)
    assert stored.started_at == stored.heartbeat_at and stored.started_at >= before
    # The object the claim returns is the row, with every field converted as the ORM converts it.
    for field in AgentJob._meta.concrete_fields:
        assert getattr(claimed, field.attname) == getattr(stored, field.attname), field.name
    assert isinstance(claimed.options, dict) and claimed.options == job.options
    bystander.refresh_from_db()
    assert (bystander.status, bystander.attempts) == (JobStatus.QUEUED, 0)


def test_stale_running_job_is_taken_over(user, store, settings):
    job = job_submit(
        user, status=JobStatus.RUNNING, attempts=1, heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    assert job_execution.job_run(job_id=job.id) == JobStatus.SUCCEEDED
    job.refresh_from_db()
    assert job.attempts == 2


def test_max_attempts_fails_the_job(user, store, settings):
    settings.AGENT_MAX_ATTEMPTS = 3
    job = job_submit(user, attempts=3)
    assert job_execution.job_run(job_id=job.id) is None
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error["code"] == "max_attempts"
    assert store.calls == []


def test_old_attempt_cannot_overwrite_a_newer_one(user, store):
    job = job_submit(user)
    claimed = job_execution.job_claim(job_id=job.id)
    AgentJob.objects.filter(id=job.id).update(attempts=2)  # another worker took over meanwhile
    from agent.types import AgentResult

    assert (
        job_execution._job_finish(claimed, 1, AgentResult(message="late", results=[], actions=[], trace=[]))
        is None
    )
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.result is None


def test_sweep_enqueues_forgotten_and_recovers_abandoned(user, store, monkeypatch, settings):
    settings.AGENT_MAX_ATTEMPTS = 3
    published: list[str] = []
    monkeypatch.setattr(jobs, "job_enqueue", lambda *, job: published.append(str(job.id)) or True)
    old = timezone.now() - timedelta(hours=1)
    forgotten = job_submit(user)
    AgentJob.objects.filter(id=forgotten.id).update(created_at=old)
    fresh = job_submit(user)
    abandoned = job_submit(user, status=JobStatus.RUNNING, attempts=1, heartbeat_at=old)
    exhausted = job_submit(user, status=JobStatus.RUNNING, attempts=3, heartbeat_at=old)
    healthy = job_submit(user, status=JobStatus.RUNNING, attempts=1, heartbeat_at=timezone.now())

    counts = jobs.jobs_sweep()

    assert counts == {"enqueued": 1, "recovered": 1, "failed": 1, "batches_completed": 0, "holds_renewed": 0}
    assert sorted(published) == sorted([str(forgotten.id), str(abandoned.id)])
    statuses = {j.id: j.status for j in AgentJob.objects.all()}
    assert statuses[abandoned.id] == JobStatus.QUEUED
    assert statuses[exhausted.id] == JobStatus.FAILED
    assert statuses[healthy.id] == JobStatus.RUNNING
    assert statuses[fresh.id] == JobStatus.QUEUED


def test_enqueue_failure_leaves_job_for_sweep(user, store, monkeypatch):
    from apps.agent import tasks

    def broken(*args, **kwargs):
        raise ConnectionError("redis down")

    monkeypatch.setattr(tasks.job_run_task, "apply_async", broken)
    job = job_submit(user)
    assert jobs.job_enqueue(job=job) is False
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.enqueued_at is None
