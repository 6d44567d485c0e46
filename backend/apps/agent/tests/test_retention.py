"""Retention: the purge service, its beat task and `manage.py purge_jobs`, and batches after a purge."""

from __future__ import annotations

import csv
import io
import itertools
import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from apps.agent import selectors
from apps.agent.models import AgentJob, Batch, JobStatus, TraceStep
from apps.agent.services import job_events, retention
from apps.agent.tasks import jobs_purge_task
from apps.webhooks.models import (
    AttemptOutcome,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    EventType,
    WebhookEndpointBlock,
)

pytestmark = pytest.mark.django_db

DAY = timedelta(days=1)


def run_job(api, capture, query: str, *, age: timedelta = timedelta(0)) -> AgentJob:
    """A job submitted and run through the API (eager task, stub LLM), its creation moved `age` back."""
    with capture(execute=True):
        response = api.post("/api/agent/jobs", {"query": query, "top_k": 2}, format="json")
    assert response.status_code == 202
    job = AgentJob.objects.get(id=response.json()["id"])
    assert job.status == JobStatus.SUCCEEDED and job.trace_steps.exists()
    AgentJob.objects.filter(id=job.id).update(created_at=timezone.now() - age)
    return job


def with_delivery(job: AgentJob, *, attempts: int = 2, status: str = DeliveryStatus.FAILED) -> Delivery:
    """A delivery of `job` after `attempts` refused sends: given up (failed) unless `status` says more."""
    delivery = Delivery.objects.create(
        event_type=EventType.JOB_SUCCEEDED,
        owner=job.owner,
        job=job,
        url="https://hooks.example.com/x",
        payload={"type": EventType.JOB_SUCCEEDED},
        status=status,
    )
    for number in range(1, attempts + 1):
        DeliveryAttempt.objects.create(
            delivery=delivery,
            series=1,
            number=number,
            started_at=timezone.now(),
            duration_ms=5.0,
            status_code=500,
            outcome=AttemptOutcome.RETRY,
        )
    return delivery


def aged(job: AgentJob, age: timedelta, **fields) -> AgentJob:
    AgentJob.objects.filter(id=job.id).update(created_at=timezone.now() - age, **fields)
    job.refresh_from_db()
    return job


@pytest.fixture
def history(api, store, django_capture_on_commit_callbacks):
    """Two finished jobs 40 days old (with deliveries), one 10 days old, one unfinished 40 days old."""
    capture = django_capture_on_commit_callbacks
    old = [run_job(api, capture, q, age=40 * DAY) for q in ("whales", "pirates")]
    with_delivery(old[0], attempts=2)
    recent = run_job(api, capture, "dragons", age=10 * DAY)
    with_delivery(recent, attempts=1)
    stuck = aged(run_job(api, capture, "stuck"), 40 * DAY, status=JobStatus.RUNNING, finished_at=None)
    return {"old": old, "recent": recent, "stuck": stuck}


# --- the service ----------------------------------------------------------------------------------


def test_purge_deletes_old_finished_jobs_with_their_rows_and_keeps_the_rest(history):
    old_ids = [j.id for j in history["old"]]
    old_steps = TraceStep.objects.filter(job_id__in=old_ids).count()
    kept_steps = TraceStep.objects.exclude(job_id__in=old_ids).count()

    report = retention.jobs_purge(older_than=30 * DAY, chunk_size=100)

    assert report.counts == {
        "jobs": 2,
        "trace_steps": old_steps,
        "deliveries": 1,
        "delivery_attempts": 2,
        "batches": 0,
        "event_streams": 2,
    }
    assert (report.complete, report.dry_run, report.chunks) == (True, False, 1)
    assert set(AgentJob.objects.values_list("id", flat=True)) == {history["recent"].id, history["stuck"].id}
    assert TraceStep.objects.filter(job_id__in=old_ids).count() == 0
    assert TraceStep.objects.count() == kept_steps > 0
    assert list(Delivery.objects.values_list("job_id", flat=True)) == [history["recent"].id]
    assert DeliveryAttempt.objects.count() == 1
    # The live events of purged jobs go too; the others' stay.
    assert job_events.events_count(job_ids=old_ids) == 0
    assert job_events.events_count(job_ids=[history["recent"].id, history["stuck"].id]) == 2


def test_unfinished_jobs_are_never_purged_however_old(history):
    retention.jobs_purge(older_than=timedelta(0), chunk_size=100)
    assert list(AgentJob.objects.values_list("id", "status")) == [(history["stuck"].id, JobStatus.RUNNING)]


def test_dry_run_counts_the_same_and_deletes_nothing(history):
    before = (AgentJob.objects.count(), TraceStep.objects.count(), DeliveryAttempt.objects.count())
    dry = retention.jobs_purge(older_than=30 * DAY, chunk_size=100, dry_run=True)
    assert (AgentJob.objects.count(), TraceStep.objects.count(), DeliveryAttempt.objects.count()) == before

    real = retention.jobs_purge(older_than=30 * DAY, chunk_size=100)
    assert dry.dry_run and dry.chunks == 0
    assert dry.counts == real.counts and (real.counts["jobs"], real.counts["event_streams"]) == (2, 2)


def test_purge_runs_in_chunks_of_primary_keys_each_in_its_own_transaction(user, monkeypatch):
    from django.db import transaction

    from apps.agent.tests.factories import job_make

    jobs = [aged(job_make(user), 5 * DAY) for _ in range(5)]
    atomics = []
    real_atomic = transaction.atomic

    def counting_atomic(*args, **kwargs):
        atomics.append(AgentJob.objects.count())  # jobs left when each transaction opens
        return real_atomic(*args, **kwargs)

    monkeypatch.setattr(retention, "transaction", SimpleNamespace(atomic=counting_atomic))

    report = retention.jobs_purge(older_than=DAY, chunk_size=2)

    assert report.counts["jobs"] == 5 and report.chunks == 3
    assert atomics == [5, 3, 1]
    assert not AgentJob.objects.filter(id__in=[j.id for j in jobs]).exists()


def test_a_spent_time_budget_stops_between_chunks_and_the_next_run_finishes(user, monkeypatch):
    from apps.agent.tests.factories import job_make

    for _ in range(4):
        aged(job_make(user), 5 * DAY)
    clock = itertools.count(0.0, 1.0)  # every look at the clock: one more second
    monkeypatch.setattr(retention.time, "monotonic", lambda: next(clock))

    first = retention.jobs_purge(older_than=DAY, chunk_size=1, time_budget_sec=1.5)
    assert (first.complete, first.counts["jobs"]) == (False, 1)
    assert AgentJob.objects.count() == 3

    rest = retention.jobs_purge(older_than=DAY, chunk_size=1)
    assert (rest.complete, rest.counts["jobs"]) == (True, 3)


def test_an_endpoint_block_outlives_the_delivery_that_caused_it(user):
    from apps.agent.tests.factories import job_make

    delivery = with_delivery(aged(job_make(user), 5 * DAY), attempts=1)
    block = WebhookEndpointBlock.objects.create(
        owner=user, url=delivery.url, status_code=410, delivery=delivery
    )

    retention.jobs_purge(older_than=DAY, chunk_size=10)

    block.refresh_from_db()
    assert block.delivery_id is None and not Delivery.objects.exists()


# --- batches ----------------------------------------------------------------------------------------


def rerun(api, capture, job_ids) -> str:
    with capture(execute=True):
        response = api.post("/api/agent/batches", {"jobs": [str(i) for i in job_ids]}, format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def test_a_rerun_batch_whose_originals_were_purged_still_answers(
    api, store, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    parents = [run_job(api, capture, q) for q in ("whales", "pirates")]
    batch_id = rerun(api, capture, [p.id for p in parents])
    assert api.get(f"/api/agent/batches/{batch_id}").json()["comparison"]["items"] == 2
    # The originals age past the retention; the batch is recent.
    aged(parents[0], 40 * DAY)

    retention.jobs_purge(older_than=30 * DAY, chunk_size=10)

    response = api.get(f"/api/agent/batches/{batch_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["parents_purged"] == 1
    first, second = body["items"]
    assert (first["parent_id"], first["parent_purged"], first["comparison"]) == (None, True, None)
    assert (second["parent_id"], second["parent_purged"]) == (str(parents[1].id), False)
    assert body["comparison"]["items"] == 1 and body["comparison"]["compared"] == 1

    # Every original gone: no comparison, and both reports say why.
    aged(parents[1], 40 * DAY)
    retention.jobs_purge(older_than=30 * DAY, chunk_size=10)
    body = api.get(f"/api/agent/batches/{batch_id}").json()
    assert (body["comparison"], body["parents_purged"]) == (None, 2)
    assert body["progress"]["succeeded"] == 2
    csv_response = api.get(f"/api/agent/batches/{batch_id}/report?format=csv")
    assert csv_response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(csv_response.content.decode())))
    assert [(r["parent_id"], r["parent_purged"], r["jaccard"]) for r in rows] == [("", "true", "")] * 2
    page = api.get(f"/api/agent/batches/{batch_id}/report?format=html")
    assert page.status_code == 200
    html = page.content.decode()
    assert "the original jobs were purged" in html and html.count("original purged") == 2


def test_batches_of_new_queries_have_no_purged_parents(api, store, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        batch_id = api.post("/api/agent/batches", {"queries": ["a", "b"]}, format="json").json()["id"]
    body = api.get(f"/api/agent/batches/{batch_id}").json()
    assert body["parents_purged"] == 0 and [i["parent_purged"] for i in body["items"]] == [False, False]


def test_an_old_batch_goes_with_its_last_job_and_its_delivery(user):
    from apps.agent.tests.factories import batch_make, job_make

    batch = batch_make(user, webhook_url="https://hooks.example.com/b")
    Batch.objects.filter(id=batch.id).update(created_at=timezone.now() - 5 * DAY)
    jobs = [aged(job_make(user, batch=batch), 5 * DAY) for _ in range(3)]
    Delivery.objects.create(
        event_type=EventType.BATCH_COMPLETED,
        owner=user,
        batch=batch,
        url=batch.webhook_url,
        payload={},
        status=DeliveryStatus.SUCCEEDED,
    )
    assert retention.jobs_purge(older_than=DAY, chunk_size=10, dry_run=True).counts["batches"] == 1

    report = retention.jobs_purge(older_than=DAY, chunk_size=2)

    assert (report.counts["jobs"], report.counts["batches"], report.counts["deliveries"]) == (3, 1, 1)
    assert not Batch.objects.exists() and not Delivery.objects.exists()
    assert not AgentJob.objects.filter(id__in=[j.id for j in jobs]).exists()


def test_an_old_batch_with_an_unfinished_job_stays_and_shows_what_is_left(user):
    from apps.agent.tests.factories import batch_make, job_make

    batch = batch_make(user)
    Batch.objects.filter(id=batch.id).update(created_at=timezone.now() - 5 * DAY)
    aged(job_make(user, batch=batch), 5 * DAY)
    running = aged(job_make(user, batch=batch, status=JobStatus.RUNNING), 5 * DAY)

    report = retention.jobs_purge(older_than=DAY, chunk_size=10)

    assert (report.counts["jobs"], report.counts["batches"]) == (1, 0)
    batch.refresh_from_db()
    view = selectors.batch_view(batch=batch)
    assert view["progress"]["total"] == 1 and [i["job_id"] for i in view["items"]] == [running.id]


# --- the beat task ----------------------------------------------------------------------------------


def test_the_task_does_nothing_when_jobs_are_kept_for_ever(user, settings):
    from apps.agent.tests.factories import job_make

    settings.AGENT_JOB_RETENTION_DAYS = None
    aged(job_make(user), 400 * DAY)
    assert "skipped" in jobs_purge_task.delay().get()
    assert AgentJob.objects.count() == 1


def test_the_task_purges_past_the_retention_within_a_time_budget(user, settings, monkeypatch):
    from apps.agent.tests.factories import job_make

    settings.AGENT_JOB_RETENTION_DAYS = 7
    settings.AGENT_PURGE_CHUNK_SIZE = 1
    settings.AGENT_PURGE_INTERVAL_SEC = 60
    old, recent = aged(job_make(user), 8 * DAY), aged(job_make(user), 6 * DAY)
    calls = []
    real = retention.jobs_purge
    monkeypatch.setattr(retention, "jobs_purge", lambda **kw: calls.append(kw) or real(**kw))

    result = jobs_purge_task.delay().get()

    assert (result["jobs"], result["complete"]) == (1, True)
    assert calls[0]["time_budget_sec"] == 30.0 and calls[0]["chunk_size"] == 1
    assert calls[0]["older_than"] == timedelta(days=7)
    assert list(AgentJob.objects.values_list("id", flat=True)) == [recent.id]
    assert not AgentJob.objects.filter(id=old.id).exists()


# --- the command ------------------------------------------------------------------------------------


def command(*args) -> str:
    out = io.StringIO()
    call_command("purge_jobs", *args, stdout=out)
    return out.getvalue()


def test_command_dry_run_then_purge_with_older_than(history, settings):
    settings.AGENT_JOB_RETENTION_DAYS = None
    dry = command("--older-than", "30", "--dry-run")
    assert "would delete 2 jobs" in dry and "1 webhook deliveries (2 attempts), 0 batches" in dry
    assert AgentJob.objects.count() == 4

    done = json.loads(command("--older-than", "30", "--json", "--chunk-size", "1"))
    assert (done["jobs"], done["deliveries"], done["delivery_attempts"], done["chunks"]) == (2, 1, 2, 2)
    assert done["dry_run"] is False and done["complete"] is True
    assert AgentJob.objects.count() == 2


def test_command_defaults_to_the_configured_retention(history, settings):
    settings.AGENT_JOB_RETENTION_DAYS = 5
    assert "deleted 3 jobs" in command()
    assert list(AgentJob.objects.values_list("id", flat=True)) == [history["stuck"].id]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "AGENT_JOB_RETENTION_DAYS is empty"),
        (("--older-than", "a month"), "expected a number of days"),
        (("--older-than", "-1"), "expected a number of days >= 0"),
        (("--older-than", "1", "--chunk-size", "0"), "--chunk-size"),
    ],
)
def test_command_refuses_bad_arguments(settings, args, message):
    settings.AGENT_JOB_RETENTION_DAYS = None
    with pytest.raises(CommandError, match=message):
        command(*args)


def test_a_redis_outage_does_not_stop_the_purge_of_rows(user, monkeypatch):
    import redis

    from apps.agent.tests.factories import job_make

    job = aged(job_make(user), 5 * DAY)

    class DownRedis:
        def delete(self, *keys):
            raise redis.ConnectionError("down")

    monkeypatch.setattr(job_events, "_client", lambda: DownRedis())

    report = retention.jobs_purge(older_than=DAY, chunk_size=10)

    assert (report.counts["jobs"], report.counts["event_streams"], report.complete) == (1, 0, True)
    assert not AgentJob.objects.filter(id=job.id).exists()


def test_a_job_whose_webhook_is_still_being_retried_stays_until_its_delivery_ends(user):
    """Its remaining retries would be lost with it (the retry schedule spans about a day)."""
    from apps.agent.tests.factories import job_make

    job = aged(job_make(user), 5 * DAY)
    delivery = with_delivery(job, status=DeliveryStatus.PENDING)

    assert retention.jobs_purge(older_than=DAY, chunk_size=10, dry_run=True).counts["jobs"] == 0
    assert retention.jobs_purge(older_than=DAY, chunk_size=10).counts["jobs"] == 0
    assert Delivery.objects.filter(id=delivery.id, status=DeliveryStatus.PENDING).exists()

    Delivery.objects.filter(id=delivery.id).update(status=DeliveryStatus.SUCCEEDED)
    report = retention.jobs_purge(older_than=DAY, chunk_size=10)
    assert (report.counts["jobs"], report.counts["deliveries"]) == (1, 1)


def test_the_parents_of_a_rerun_batch_under_way_stay_until_it_completes(user):
    """The batch's comparison reads them when it completes."""
    from apps.agent.tests.factories import batch_make, job_make

    parent = aged(job_make(user), 5 * DAY)
    batch = batch_make(user, completed=False)
    rerun = job_make(user, batch=batch, parent=parent, status=JobStatus.QUEUED)

    assert retention.jobs_purge(older_than=DAY, chunk_size=10).counts["jobs"] == 0
    assert AgentJob.objects.filter(id=parent.id).exists()

    AgentJob.objects.filter(id=rerun.id).update(status=JobStatus.SUCCEEDED, finished_at=timezone.now())
    Batch.objects.filter(id=batch.id).update(completed_at=timezone.now())
    assert retention.jobs_purge(older_than=DAY, chunk_size=10).counts["jobs"] == 1
    assert not AgentJob.objects.filter(id=parent.id).exists()


def test_an_old_batch_whose_webhook_is_still_being_retried_stays_with_its_jobs(user):
    from apps.agent.tests.factories import batch_make, job_make

    batch = batch_make(user, webhook_url="https://hooks.example.com/b")
    Batch.objects.filter(id=batch.id).update(created_at=timezone.now() - 5 * DAY)
    job = aged(job_make(user, batch=batch), 5 * DAY)
    Delivery.objects.create(
        event_type=EventType.BATCH_COMPLETED, owner=user, batch=batch, url=batch.webhook_url, payload={}
    )

    report = retention.jobs_purge(older_than=DAY, chunk_size=10)

    # The job goes (nothing of its own is pending); the batch, with its pending delivery, stays.
    assert (report.counts["jobs"], report.counts["batches"], report.counts["deliveries"]) == (1, 0, 0)
    assert Batch.objects.filter(id=batch.id).exists() and not AgentJob.objects.filter(id=job.id).exists()
