"""Batch services: creation (queries, ids, filter), limits, idempotency, progress, comparison, cancel."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from agent.types import AgentOptions, Filters
from apps.agent import selectors
from apps.agent.models import AgentJob, Batch, JobStatus
from apps.agent.services import batches, job_execution, jobs, retrieval
from apps.agent.tests.factories import job_finished
from core.errors import Conflict, IdempotencyMismatch, ValidationFailed

pytestmark = pytest.mark.django_db


def finish(job: AgentJob, *, ids=(), **fields) -> None:
    """Craft the outcome of a batch job, then run the terminal effects as the worker would."""
    from apps.agent.services.events import job_terminal_event

    values = {
        "status": JobStatus.SUCCEEDED,
        "result": {"message": "m", "results": [{"id": i} for i in ids], "actions": []},
        "finished_at": timezone.now(),
        **fields,
    }
    AgentJob.objects.filter(id=job.id).update(**values)
    job_terminal_event(job_id=job.id)


def error_code(excinfo) -> str:
    return excinfo.value.code


# --- creation ---------------------------------------------------------------------------------------


def test_queries_become_ordinary_queued_jobs_of_the_batch(user, settings):
    settings.AGENT_TOP_K_DEFAULT = 4
    batch, created = batches.batch_create(owner=user, queries=["  whales ", "dragons"])
    assert created is True
    assert (batch.source, batch.size, batch.selection, batch.status) == (
        "queries",
        2,
        {"queries": 2},
        "running",
    )
    rows = list(AgentJob.objects.filter(batch=batch).order_by("created_at"))
    assert [j.query for j in rows] == ["whales", "dragons"]
    assert all(j.status == JobStatus.QUEUED and j.parent_id is None and j.owner == user for j in rows)
    assert all(j.options == {"top_k": 4, "filters": {}} for j in rows)
    assert all(j.webhook_url == "" and j.key_source == "none" for j in rows)


def test_rerun_of_ids_copies_query_and_options_and_applies_overrides(user, settings):
    settings.LLM = dataclasses.replace(settings.LLM, provider="openai_compatible", api_key="sk-test")
    parent = job_finished(user, "novelas", options=AgentOptions(top_k=3, filters=Filters(language="es")))
    batch, _ = batches.batch_create(
        owner=user, job_ids=[parent.id], overrides={"model": "gpt-4o-mini", "top_k": 7, "cost_mode": "hybrid"}
    )
    child = AgentJob.objects.get(batch=batch)
    assert (child.parent_id, child.query) == (parent.id, "novelas")
    assert child.options == {"top_k": 7, "filters": {"language": "es"}}
    assert (child.model, child.cost_mode, child.key_source) == ("gpt-4o-mini", "hybrid", "server")
    assert batch.overrides == {"model": "gpt-4o-mini", "top_k": 7, "cost_mode": "hybrid"}
    assert batch.selection == {"ids": [str(parent.id)]}


def test_filters_override_replaces_the_parents_filters(user):
    parent = job_finished(user, options=AgentOptions(top_k=3, filters=Filters(language="es", year_min=1900)))
    batch, _ = batches.batch_create(
        owner=user, job_ids=[parent.id], overrides={"filters": {"genres": ["fantasy"]}}
    )
    assert AgentJob.objects.get(batch=batch).options == {"top_k": 3, "filters": {"genres": ["fantasy"]}}


def test_a_rerun_keeps_the_answer_language_its_original_asked_for(user):
    """Only the overrides may differ: a re-run that detected the language anew answered in another one."""
    asked = AgentOptions(top_k=3, language="es", language_source="header")
    parent = job_finished(user, "books about whales", options=asked)
    batch, _ = batches.batch_create(owner=user, job_ids=[parent.id], overrides={"top_k": 2})
    child = AgentJob.objects.get(batch=batch)
    assert child.options == {"top_k": 2, "filters": {}, "language": "es", "language_source": "header"}


def test_repeated_ids_count_once_in_first_order(user):
    a, b = job_finished(user, "a"), job_finished(user, "b")
    batch, _ = batches.batch_create(owner=user, job_ids=[b.id, a.id, b.id])
    assert batch.size == 2
    assert [j.parent_id for j in AgentJob.objects.filter(batch=batch).order_by("created_at", "id")] == [
        b.id,
        a.id,
    ]


def test_filter_selects_the_owners_finished_jobs_in_range(user, other_user):
    now = timezone.now()
    old = job_finished(user, "old", degraded=True)
    AgentJob.objects.filter(id=old.id).update(created_at=now - timedelta(days=10))
    recent_degraded = job_finished(user, "recent degraded", degraded=True)
    job_finished(user, "recent fine")
    job_finished(user, "failed degraded", status=JobStatus.FAILED, degraded=True)
    job_finished(other_user, "not mine", degraded=True)
    jobs.job_create(owner=user, query="still queued", options=AgentOptions(), enqueue=False)

    job_filter = batches.JobFilter(
        status="succeeded", created_after=now - timedelta(days=1), degraded_only=True
    )
    batch, _ = batches.batch_create(owner=user, job_filter=job_filter)
    assert [j.parent_id for j in AgentJob.objects.filter(batch=batch)] == [recent_degraded.id]
    assert batch.selection["matched"] == 1
    assert batch.selection["filter"]["degraded_only"] is True

    everything, _ = batches.batch_create(owner=user, job_filter=batches.JobFilter())
    queries = sorted(AgentJob.objects.filter(batch=everything).values_list("query", flat=True))
    assert queries == ["failed degraded", "old", "recent degraded", "recent fine"]


def test_created_before_is_exclusive(user):
    job = job_finished(user)
    with pytest.raises(ValidationFailed) as excinfo:
        batches.batch_create(owner=user, job_filter=batches.JobFilter(created_before=job.created_at))
    assert error_code(excinfo) == "batch_empty"


# --- limits and refusals: nothing is written -----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"queries": []}, "batch_empty"),
        ({"job_ids": []}, "batch_empty"),
        ({"job_filter": batches.JobFilter(status="failed")}, "batch_empty"),
        ({}, "invalid_selection"),
        ({"queries": ["a"], "job_ids": []}, "invalid_selection"),
        ({"queries": ["a"], "overrides": {"cost_mode": "byo_key"}}, "byo_key_not_supported"),
        ({"queries": ["a"], "overrides": {"vector_store_build": "nope"}}, "unknown_vector_store_build"),
    ],
)
def test_refusals_write_nothing(user, monkeypatch, kwargs, code):
    monkeypatch.setattr(retrieval, "store_identity", lambda: {"build_id": "b1"})
    job_finished(user)
    before = AgentJob.objects.count()
    with pytest.raises(ValidationFailed) as excinfo:
        batches.batch_create(owner=user, **kwargs)
    assert error_code(excinfo) == code
    assert Batch.objects.count() == 0
    assert AgentJob.objects.count() == before


def test_too_many_queries_or_ids_or_matches(user, settings):
    settings.AGENT_BATCH_MAX_SIZE = 3
    parents = [job_finished(user, f"q{i}") for i in range(5)]
    with pytest.raises(ValidationFailed) as excinfo:
        batches.batch_create(owner=user, queries=["a", "b", "c", "d"])
    assert (excinfo.value.code, excinfo.value.details) == ("batch_too_large", {"count": 4, "max": 3})
    with pytest.raises(ValidationFailed) as excinfo:
        batches.batch_create(owner=user, job_ids=[p.id for p in parents[:4]])
    assert excinfo.value.details == {"count": 4, "max": 3}
    with pytest.raises(ValidationFailed) as excinfo:
        batches.batch_create(owner=user, job_filter=batches.JobFilter())
    assert excinfo.value.details == {"count": 5, "max": 3}
    batch, _ = batches.batch_create(owner=user, queries=["a", "b", "c"])
    assert batch.size == 3


def test_another_users_jobs_are_reported_missing_like_unknown_ids(user, other_user):
    mine = job_finished(user)
    theirs = job_finished(other_user)
    unknown = uuid.uuid4()
    with pytest.raises(ValidationFailed) as excinfo:
        batches.batch_create(owner=user, job_ids=[mine.id, theirs.id, unknown])
    assert excinfo.value.code == "jobs_not_found"
    assert excinfo.value.details == {"missing": [str(theirs.id), str(unknown)]}
    assert Batch.objects.count() == 0


def test_unfinished_jobs_cannot_be_rerun(user):
    queued, _ = jobs.job_create(owner=user, query="q", options=AgentOptions(), enqueue=False)
    with pytest.raises(ValidationFailed) as excinfo:
        batches.batch_create(owner=user, job_ids=[queued.id])
    assert (excinfo.value.code, excinfo.value.details) == (
        "jobs_not_finished",
        {"not_finished": [str(queued.id)]},
    )


def test_server_in_byo_key_mode_refuses_batches(user, settings):
    settings.LLM = dataclasses.replace(settings.LLM, cost_mode=type(settings.LLM.cost_mode)("byo_key"))
    with pytest.raises(ValidationFailed) as excinfo:
        batches.batch_create(owner=user, queries=["a"])
    assert excinfo.value.code == "byo_key_required"


def test_vector_store_build_must_be_the_deployed_one(user, monkeypatch):
    monkeypatch.setattr(retrieval, "store_identity", lambda: {"build_id": "abc123", "document_count": 3})
    batch, _ = batches.batch_create(owner=user, queries=["a"], overrides={"vector_store_build": "abc123"})
    assert batch.overrides == {"vector_store_build": "abc123"}
    with pytest.raises(ValidationFailed) as excinfo:
        batches.batch_create(owner=user, queries=["a"], overrides={"vector_store_build": "old999"})
    assert excinfo.value.details == {"field": "overrides.vector_store_build", "available": ["abc123"]}


def test_idempotency_same_body_same_batch_other_body_422(user):
    batch, created = batches.batch_create(owner=user, queries=["a", "b"], idempotency_key="k1")
    again, created_again = batches.batch_create(owner=user, queries=["a", "b"], idempotency_key="k1")
    assert (created, created_again, again.id) == (True, False, batch.id)
    assert AgentJob.objects.count() == 2
    with pytest.raises(IdempotencyMismatch):
        batches.batch_create(owner=user, queries=["a", "c"], idempotency_key="k1")
    with pytest.raises(IdempotencyMismatch):
        batches.batch_create(owner=user, queries=["a", "b"], overrides={"top_k": 2}, idempotency_key="k1")


def test_a_batch_of_the_maximum_size_is_created_quickly(user, settings, django_capture_on_commit_callbacks):
    settings.AGENT_BATCH_MAX_SIZE = 500
    started = time.perf_counter()
    with django_capture_on_commit_callbacks() as callbacks:
        batch, _ = batches.batch_create(owner=user, queries=[f"question {i}" for i in range(500)])
    elapsed = time.perf_counter() - started
    assert AgentJob.objects.filter(batch=batch, status=JobStatus.QUEUED).count() == 500
    # One callback publishes the whole batch (not one per job).
    assert len(callbacks) == 1
    assert elapsed < 5.0, f"creating 500 jobs took {elapsed:.2f} s"


# --- running, progress, completion ---------------------------------------------------------------


def test_batch_jobs_run_after_commit_and_complete_the_batch(user, store, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        batch, _ = batches.batch_create(owner=user, queries=["whales", "pirates"], overrides={"top_k": 2})
    batch.refresh_from_db()
    assert batch.completed_at is not None and batch.status == "completed"
    view = selectors.batch_view(batch=batch)
    assert view["progress"] == {
        "total": 2,
        "queued": 0,
        "running": 0,
        "succeeded": 2,
        "failed": 0,
        "cancelled": 0,
        "finished": 2,
        "percent": 100.0,
    }
    assert [item["result_ids"] for item in view["items"]] == [["1", "2"], ["1", "2"]]
    assert view["totals"]["total_tokens"] > 0
    assert view["totals"]["latency_ms"]["count"] == 2
    assert view["comparison"] is None  # new queries: nothing to compare with


def test_progress_while_running_and_no_comparison_before_the_end(user):
    parents = [job_finished(user, f"q{i}") for i in range(4)]
    batch, _ = batches.batch_create(owner=user, job_ids=[p.id for p in parents])
    children = list(AgentJob.objects.filter(batch=batch).order_by("created_at", "id"))
    finish(children[0], ids=("1", "2"))
    finish(children[1], status=JobStatus.FAILED, error={"code": "x", "message": "y"})
    AgentJob.objects.filter(id=children[2].id).update(status=JobStatus.RUNNING)
    view = selectors.batch_view(batch=Batch.objects.get(id=batch.id))
    assert view["progress"] == {
        "total": 4,
        "queued": 1,
        "running": 1,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
        "finished": 2,
        "percent": 50.0,
    }
    assert view["comparison"] is None
    assert all(item["comparison"] is None for item in view["items"])


def test_comparison_on_crafted_parents(user):
    p_same = job_finished(user, "same", ids=("1", "2", "3"), latency_ms=100.0, cost_usd=Decimal("0.001"))
    p_order = job_finished(user, "order", ids=("1", "2", "3"), latency_ms=100.0, cost_usd=Decimal("0.001"))
    p_books = job_finished(user, "books", ids=("1", "2"), latency_ms=200.0, cost_usd=Decimal("0.002"))
    p_fail = job_finished(user, "fails now", ids=("5",), degraded=True)
    p_deleted = job_finished(user, "parent deleted later", ids=("1",))
    batch, _ = batches.batch_create(
        owner=user, job_ids=[p_same.id, p_order.id, p_books.id, p_fail.id, p_deleted.id]
    )
    kids = {j.parent_id: j for j in AgentJob.objects.filter(batch=batch)}
    finish(kids[p_same.id], ids=("1", "2", "3"), latency_ms=150.0, cost_usd=Decimal("0.002"))
    finish(kids[p_order.id], ids=("3", "1", "2"), latency_ms=50.0, cost_usd=Decimal("0.001"))
    finish(kids[p_books.id], ids=("2", "4"), degraded=True, latency_ms=300.0, cost_usd=Decimal("0.004"))
    finish(kids[p_fail.id], status=JobStatus.FAILED, latency_ms=10.0, cost_usd=Decimal("0"))
    AgentJob.objects.filter(id=p_deleted.id).delete()  # SET_NULL: the re-run has no parent any more
    finish(kids[p_deleted.id], ids=("1",))

    batch.refresh_from_db()
    assert batch.status == "completed"
    view = selectors.batch_view(batch=batch)
    by_query = {item["query"]: item for item in view["items"]}
    assert [item["position"] for item in view["items"]] == [1, 2, 3, 4, 5]

    same = by_query["same"]["comparison"]
    assert (same["jaccard"], same["results_changed"], same["rank_changes"]) == (1.0, False, [])
    assert (same["latency_delta_ms"], same["cost_delta_usd"]) == (50.0, 0.001)

    order = by_query["order"]["comparison"]
    assert (order["jaccard"], order["results_changed"], order["order_changed"]) == (1.0, True, True)
    assert order["rank_changes"] == [
        {"id": "3", "parent_rank": 3, "rank": 1},
        {"id": "1", "parent_rank": 1, "rank": 2},
        {"id": "2", "parent_rank": 2, "rank": 3},
    ]

    books = by_query["books"]["comparison"]
    assert books["jaccard"] == 0.3333
    assert (books["added_ids"], books["removed_ids"]) == (["4"], ["1"])
    assert books["degraded_change"] == "became_degraded"
    assert (books["latency_delta_ms"], books["cost_delta_usd"]) == (100.0, 0.002)

    failed = by_query["fails now"]["comparison"]
    assert (failed["compared"], failed["parent_status"], failed["jaccard"]) == (False, "succeeded", None)
    assert by_query["parent deleted later"]["comparison"] is None

    assert view["comparison"] == {
        "items": 4,
        "compared": 3,
        "not_compared": 1,
        "identical": 1,
        "reordered": 1,
        "changed": 1,
        "mean_jaccard": round((1 + 1 + 1 / 3) / 3, 4),
        "min_jaccard": 0.3333,
        "degraded": {"became_degraded": 1, "recovered": 0, "unchanged": 2},
        "latency_ms": {
            "parent_p50": 100.0,
            "rerun_p50": 150.0,
            "parent_p95": 190.0,
            "rerun_p95": 285.0,
            "mean_delta": 33.3,
        },
        "cost_usd": {"parent_total": 0.004, "rerun_total": 0.007, "delta": 0.003},
        "store_changed": 0,
    }
    assert view["totals"]["cost_usd"] == 0.007


def test_completion_happens_once(user):
    batch, _ = batches.batch_create(owner=user, queries=["a"])
    job = AgentJob.objects.get(batch=batch)
    assert batches.batch_completion_check(batch_id=batch.id) is False
    AgentJob.objects.filter(id=job.id).update(status=JobStatus.SUCCEEDED)
    assert batches.batch_completion_check(batch_id=batch.id) is True
    assert batches.batch_completion_check(batch_id=batch.id) is False


# --- cancel -------------------------------------------------------------------------------------


def test_cancel_cancels_queued_and_asks_running_to_stop(user):
    batch, _ = batches.batch_create(owner=user, queries=["a", "b", "c"])
    running = AgentJob.objects.filter(batch=batch).order_by("created_at").first()
    AgentJob.objects.filter(id=running.id).update(status=JobStatus.RUNNING, attempts=1)

    batch = batches.batch_cancel(batch=batch)
    assert batch.status == "cancelling" and batch.cancelled_at is not None
    rows = {j.id: j for j in AgentJob.objects.filter(batch=batch)}
    assert rows.pop(running.id).cancel_requested is True
    assert all(j.status == JobStatus.CANCELLED and j.finished_at for j in rows.values())
    assert batches.batch_cancel(batch=batch).status == "cancelling"  # idempotent

    # The running job stops at its next step boundary; the batch then ends as cancelled.
    job_execution._job_finish_cancelled(AgentJob.objects.get(id=running.id), 1)
    batch.refresh_from_db()
    assert batch.status == "cancelled" and batch.completed_at is not None


def test_cancel_of_all_queued_completes_at_once_and_sends_the_batch_event(user, settings):
    from apps.webhooks.models import Delivery

    settings.WEBHOOK_ALLOWED_HOSTS = ["receiver.test"]
    batch, _ = batches.batch_create(owner=user, queries=["a", "b"], webhook_url="https://receiver.test/hook")
    batch = batches.batch_cancel(batch=batch)
    assert batch.status == "cancelled"
    delivery = Delivery.objects.get(batch=batch)
    assert delivery.event_type == "agent.batch.completed"
    assert delivery.payload["data"]["status"] == "cancelled"
    assert delivery.payload["data"]["jobs"]["cancelled"] == 2


def test_cancel_of_a_completed_batch_is_a_conflict(user):
    batch, _ = batches.batch_create(owner=user, queries=["a"])
    finish(AgentJob.objects.get(batch=batch), ids=("1",))
    batch.refresh_from_db()
    with pytest.raises(Conflict):
        batches.batch_cancel(batch=batch)


# --- the sweep ----------------------------------------------------------------------------------


def test_sweep_gives_waiting_batch_jobs_longer_before_republishing(user, settings, monkeypatch):
    settings.AGENT_QUEUED_STALE_SEC = 60
    settings.AGENT_BATCH_QUEUED_STALE_SEC = 900
    published = []
    monkeypatch.setattr(jobs, "job_enqueue", lambda *, job: published.append(job.id) or True)
    interactive, _ = jobs.job_create(owner=user, query="i", options=AgentOptions(), enqueue=False)
    batch, _ = batches.batch_create(owner=user, queries=["waiting", "lost"])
    waiting, lost = AgentJob.objects.filter(batch=batch).order_by("created_at")
    now = timezone.now()
    AgentJob.objects.filter(id__in=[interactive.id, waiting.id]).update(
        enqueued_at=now - timedelta(minutes=5)
    )
    AgentJob.objects.filter(id=lost.id).update(enqueued_at=now - timedelta(minutes=20))

    assert jobs.jobs_sweep()["enqueued"] == 2
    assert sorted(map(str, published)) == sorted([str(interactive.id), str(lost.id)])


def test_the_sweep_completes_a_batch_whose_last_unfinished_job_was_deleted(user, monkeypatch):
    """A batch is completed by the end of its last job: a job deleted before it ended (the admin) never
    ends, and the batch stayed `running` for ever (with its spending hold renewed by every sweep)."""
    monkeypatch.setattr(jobs, "job_enqueue", lambda *, job: True)
    batch, _ = batches.batch_create(owner=user, queries=["ends", "deleted"])
    ends, deleted = AgentJob.objects.filter(batch=batch).order_by("created_at")
    AgentJob.objects.filter(id=ends.id).update(status=JobStatus.SUCCEEDED, finished_at=timezone.now())
    deleted.delete()
    batch.refresh_from_db()
    assert batch.completed_at is None

    assert jobs.jobs_sweep()["batches_completed"] == 1

    batch.refresh_from_db()
    assert batch.completed_at is not None
    assert jobs.jobs_sweep()["batches_completed"] == 0  # once


# --- publishing ----------------------------------------------------------------------------------


def test_batch_jobs_are_routed_to_the_batch_queue_at_low_priority():
    from config.celery_app import app

    batch_route = app.amqp.router.route({}, "agent.batch_job_run", (), {})
    interactive_route = app.amqp.router.route({}, "agent.job_run", (), {})
    assert (batch_route["queue"].name, batch_route["priority"]) == ("batch", 9)
    # Every route names its priority (config/broker.py): Celery's task_default_priority would otherwise
    # override the batch route's. On Redis, 0 is served first.
    assert (interactive_route["queue"].name, interactive_route["priority"]) == ("agent", 0)


def test_a_failed_publish_leaves_the_batch_for_the_sweep(user, monkeypatch, caplog):
    from config.celery_app import app

    batch, _ = batches.batch_create(owner=user, queries=["a", "b"])
    rows = list(AgentJob.objects.filter(batch=batch))
    app.conf.task_always_eager = False  # restored to True by the autouse settings fixture

    def broker_down(*args, **kwargs):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(app, "producer_or_acquire", broker_down)
    assert jobs.jobs_enqueue(jobs=rows) == 0
    assert (
        AgentJob.objects.filter(batch=batch, enqueued_at__isnull=True, status=JobStatus.QUEUED).count() == 2
    )
    assert "could not enqueue 2 jobs (ConnectionError); the sweep will retry" in caplog.text


@pytest.mark.django_db(transaction=True)  # the foreign key is checked when the batch's transaction commits
def test_a_parent_purged_while_its_batch_is_created_is_jobs_not_found_not_a_500(user, monkeypatch):
    from apps.agent.services import budgets
    from core.errors import ValidationFailed

    parent = job_finished(user, "whales")
    hold = budgets.batch_hold

    def purged_meanwhile(**kwargs):
        # A retention purge commits between the selection's read and the batch's transaction.
        AgentJob.objects.filter(id=parent.id).delete()
        return hold(**kwargs)

    monkeypatch.setattr(budgets, "batch_hold", purged_meanwhile)
    with pytest.raises(ValidationFailed) as caught:
        batches.batch_create(owner=user, job_ids=[parent.id])

    assert caught.value.code == "jobs_not_found" and caught.value.details == {"missing": [str(parent.id)]}
    assert not Batch.objects.exists() and not AgentJob.objects.exists()
