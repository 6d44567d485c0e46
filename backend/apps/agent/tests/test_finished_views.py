"""GET /api/agent/jobs/<id> of a finished job: read once, then answered from the API process's memory."""

from __future__ import annotations

import types
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.agent.models import AgentJob, JobStatus, TraceStep
from apps.agent.tests.factories import job_finished, job_submit
from core import caches

pytestmark = pytest.mark.django_db

URL = "/api/agent/jobs"


def _finished(owner, **fields) -> AgentJob:
    """A succeeded job with a result of the documented shape (and trace rows, as the worker writes)."""
    book = {"id": "1", "title": "Moby-Dick", "author": "Herman Melville", "year": 1851, "score": 0.9}
    result = {"message": "Moby-Dick.", "results": [{**book, "why": "whales", "cited": True}], "actions": []}
    job = job_finished(owner, result=result, **fields)
    TraceStep.objects.create(
        job=job,
        attempt=job.attempts,
        position=0,
        name="retrieve",
        started_at=job.finished_at,
        duration_ms=1.0,
    )
    return job


def _get(api, job_id) -> tuple[object, int]:
    with CaptureQueriesContext(connection) as queries:
        response = api.get(f"{URL}/{job_id}")
    return response, len(queries)


def test_a_finished_job_is_read_once_then_answered_without_a_query(api, user):
    job = _finished(user)

    first, first_queries = _get(api, job.id)
    again, again_queries = _get(api, job.id)

    assert first.status_code == again.status_code == 200
    assert first_queries == 2  # the job, its trace (authentication is forced: no token query)
    assert again_queries == 0
    assert again.json() == first.json()
    assert again.json()["status"] == "succeeded" and "Retry-After" not in again


def test_another_user_gets_the_404_of_a_job_that_does_not_exist(api, other_api, user):
    job = _finished(user)
    assert api.get(f"{URL}/{job.id}").status_code == 200  # now remembered

    theirs, their_queries = _get(other_api, job.id)
    nobody, nobody_queries = _get(other_api, uuid.uuid4())

    assert theirs.status_code == nobody.status_code == 404
    assert theirs.json() == nobody.json()
    assert theirs.json()["error"]["code"] == "not_found"
    # The same path too: not a faster answer from memory, which would tell the two ids apart by timing.
    assert their_queries == nobody_queries == 1


def test_a_job_that_has_not_ended_is_read_every_time(api, user):
    job = job_submit(user)
    running, queries = _get(api, job.id)
    assert running.json()["status"] == "queued" and running["Retry-After"] == "1"
    assert queries == 1  # the job; no trace before the end

    AgentJob.objects.filter(id=job.id).update(status=JobStatus.SUCCEEDED, result={"message": "done"})
    ended, queries = _get(api, job.id)

    assert ended.json()["status"] == "succeeded" and ended.json()["message"] == "done"
    assert queries == 2


def test_a_job_with_a_webhook_is_read_every_time(api, user):
    """Its delivery state changes after the job ended (attempts, a redelivery): never remembered."""
    job = _finished(user, webhook_url="https://hooks.example.com/librarian")

    _, first_queries = _get(api, job.id)
    _, again_queries = _get(api, job.id)

    assert first_queries > 2 and again_queries == first_queries


def test_the_memory_lasts_API_JOB_CACHE_SEC(api, user, settings, monkeypatch):
    clock = types.SimpleNamespace(monotonic=lambda: 1000.0)
    monkeypatch.setattr(caches, "time", clock)  # the LRU's expiry
    settings.API_JOB_CACHE_SEC = 30
    job = _finished(user)
    assert api.get(f"{URL}/{job.id}").status_code == 200
    AgentJob.objects.filter(id=job.id).delete()  # e.g. the retention purge

    clock.monotonic = lambda: 1029.0
    assert api.get(f"{URL}/{job.id}").status_code == 200  # documented: served until the time is up
    clock.monotonic = lambda: 1030.0
    gone = api.get(f"{URL}/{job.id}")

    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


def test_zero_turns_the_memory_off(api, user, settings):
    settings.API_JOB_CACHE_SEC = 0
    job = _finished(user)

    _, first_queries = _get(api, job.id)
    _, again_queries = _get(api, job.id)

    assert first_queries == again_queries == 2
