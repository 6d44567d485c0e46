"""A database error in a job task hands back only the attempt that the task itself claimed.

tests/faults/test_database_faults.py drops real connections under a real worker; these pin the rules.
"""

from __future__ import annotations

import pytest
from django.db import OperationalError

from apps.agent import tasks
from apps.agent.models import AgentJob, JobStatus
from apps.agent.services import job_execution
from apps.agent.tests.factories import job_submit
from apps.agent.tests.wiring import wire_runtime

pytestmark = pytest.mark.django_db


class Retried(Exception):
    pass


class FakeTask:
    """What `_run` needs of a bound Celery task: `retry()` returns the exception to raise."""

    def __init__(self):
        self.retries: list[dict] = []

    def retry(self, **kwargs):
        self.retries.append(kwargs)
        return Retried()


# The task closes the broken connection, which a test's own transaction would not survive.
@pytest.mark.django_db(transaction=True)
def test_an_error_before_the_claim_leaves_another_workers_attempt_running(user, store, monkeypatch):
    job = job_submit(user, status=JobStatus.RUNNING, attempts=1, claimed_by="other-host:7")

    def no_connection(*, job_id):
        raise OperationalError("couldn't get a connection after 5.00 sec")

    monkeypatch.setattr(job_execution, "job_claim", no_connection)
    task = FakeTask()
    with pytest.raises(Retried):
        tasks._run(task, str(job.id))

    stored = AgentJob.objects.get(id=job.id)
    assert (stored.status, stored.attempts) == (JobStatus.RUNNING, 1)  # not handed back: not ours
    assert task.retries == [{"countdown": 1, "max_retries": 5}]


@pytest.mark.django_db(transaction=True)
def test_an_error_during_our_attempt_hands_that_attempt_back(user, store, monkeypatch):
    job = job_submit(user)

    def database_drops(job, key):
        raise OperationalError("server closed the connection unexpectedly")

    wire_runtime(monkeypatch, llm_for=database_drops)
    task = FakeTask()
    with pytest.raises(Retried):
        tasks._run(task, str(job.id))

    stored = AgentJob.objects.get(id=job.id)
    assert (stored.status, stored.attempts) == (JobStatus.QUEUED, 1)  # the retried task claims attempt 2
    assert len(task.retries) == 1


def test_a_bug_during_an_attempt_hands_it_back_for_the_sweep_to_publish(user, store, monkeypatch):
    job = job_submit(user)

    def bug(job, key):
        raise KeyError("a bug")

    wire_runtime(monkeypatch, llm_for=bug)
    with pytest.raises(KeyError):
        job_execution.job_run(job_id=job.id)

    stored = AgentJob.objects.get(id=job.id)
    assert (stored.status, stored.attempts, stored.enqueued_at) == (JobStatus.QUEUED, 1, None)


def test_a_claim_whose_read_fails_is_undone(user, store, monkeypatch):
    job = job_submit(user)

    def read_fails(*args, **kwargs):
        raise OperationalError("connection lost")

    monkeypatch.setattr(AgentJob.objects, "select_related", read_fails)
    with pytest.raises(OperationalError):
        job_execution.job_claim(job_id=job.id)

    stored = AgentJob.objects.get(id=job.id)
    assert (stored.status, stored.attempts) == (JobStatus.QUEUED, 1)


def test_attempts_handed_back_after_a_database_error_do_not_use_up_max_attempts(user, store, settings):
    settings.AGENT_MAX_ATTEMPTS = 3
    # Two attempts met a busy pool and were handed back; one worker died: one attempt used of three.
    job = job_submit(user, attempts=3, attempts_handed_back=2)
    assert job_execution.job_run(job_id=job.id) == JobStatus.SUCCEEDED
    assert AgentJob.objects.get(id=job.id).attempts == 4

    # Attempts that were presumed lost, or raised a bug, count: three of them end the job.
    used = job_submit(user, attempts=3, attempts_handed_back=0)
    assert job_execution.job_run(job_id=used.id) is None
    assert AgentJob.objects.get(id=used.id).error["code"] == "max_attempts"

    # Free hand-backs are bounded, so that a job that always meets a database error still ends.
    endless = job_submit(user, attempts=3 + job_execution.FREE_ATTEMPTS_MAX, attempts_handed_back=50)
    assert job_execution.job_run(job_id=endless.id) is None
    assert AgentJob.objects.get(id=endless.id).error["code"] == "max_attempts"


@pytest.mark.django_db(transaction=True)
def test_the_task_hands_back_as_free_and_the_sweep_as_counted(user, store, monkeypatch, settings):
    job = job_submit(user)

    def database_drops(job, key):
        raise OperationalError("couldn't get a connection after 5.00 sec")

    wire_runtime(monkeypatch, llm_for=database_drops)
    with pytest.raises(Retried):
        tasks._run(FakeTask(), str(job.id))
    stored = AgentJob.objects.get(id=job.id)
    assert (stored.attempts, stored.attempts_handed_back) == (1, 1)
    assert not job_execution.attempts_used_up(stored)

    assert job_execution.job_release(job_id=job.id, attempt=1) is False  # queued already: nothing to release
