"""The prepared finish statements store exactly what `QuerySet.update()` and `bulk_create()` store."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection

from agent.types import AgentOptions
from apps.agent.models import AgentJob, JobStatus, TraceStep
from apps.agent.services import jobs, statements

pytestmark = pytest.mark.django_db

VALUES = {
    "status": JobStatus.SUCCEEDED,
    "degraded": True,
    "result": {"message": "Léelo: «Niebla»", "results": [{"id": "7", "score": 0.5}], "actions": []},
    "error": None,
    "finished_at": datetime(2026, 11, 27, 12, 30, 1, 123456, tzinfo=UTC),
    "prompt_tokens": 270,
    "completion_tokens": 51,
    "usage_estimated": True,
    "cost_usd": Decimal("0.000123"),
    "latency_ms": 12.5,
    "vector_store": {"build_id": "b1", "document_count": 320},
}


def running_job(user) -> AgentJob:
    job, _ = jobs.job_create(owner=user, query="whales", options=AgentOptions(top_k=2), enqueue=False)
    AgentJob.objects.filter(id=job.id).update(status=JobStatus.RUNNING, attempts=1)
    return job


def row(model, pk, exclude=("id",)):
    obj = model.objects.get(pk=pk)
    return {f.attname: getattr(obj, f.attname) for f in model._meta.concrete_fields if f.name not in exclude}


def test_conditional_update_stores_what_the_orm_stores(user):
    by_orm, by_statement = running_job(user), running_job(user)
    where = {"status": JobStatus.RUNNING, "attempts": 1, "cancel_requested": False}
    assert AgentJob.objects.filter(id=by_orm.id, **where).update(**VALUES) == 1

    statement = statements.conditional_update(AgentJob, VALUES, {"id": by_statement.id, **where})
    assert statements.execute(statement) == 1

    ignored = ("id", "created_at", "request_fingerprint")
    assert row(AgentJob, by_statement.id, ignored) == row(AgentJob, by_orm.id, ignored)
    stored = AgentJob.objects.get(id=by_statement.id)
    assert stored.error is None and stored.result["message"] == "Léelo: «Niebla»"
    # JSON null stays SQL NULL, as with the ORM.
    assert AgentJob.objects.filter(id=by_statement.id, error__isnull=True).exists()


def test_conditional_update_changes_nothing_when_a_condition_fails(user):
    job = running_job(user)
    statement = statements.conditional_update(
        AgentJob, {"status": JobStatus.FAILED}, {"id": job.id, "attempts": 2}
    )
    assert statements.execute(statement) == 0
    assert AgentJob.objects.get(id=job.id).status == JobStatus.RUNNING


def test_bulk_insert_stores_what_bulk_create_stores(user):
    first, second = running_job(user), running_job(user)
    steps = [
        {
            "attempt": 1,
            "position": position,
            "name": name,
            "started_at": "2026-11-27T12:30:01.123456+00:00",  # as the pipeline's trace carries it
            "duration_ms": 1.5 * position,
            "inputs": {"query": "¿ballenas?"},
            "outputs": {"n": position},
            "prompt_tokens": None if position else 10,
            "completion_tokens": 3,
            "cost_usd": 1e-06,
            "error": None if position < 2 else {"code": "timeout"},
        }
        for position, name in enumerate(["retrieve", "prompt", "llm"])
    ]
    TraceStep.objects.bulk_create([TraceStep(job_id=first.id, **step) for step in steps])
    assert (
        statements.execute(statements.bulk_insert(TraceStep, [{"job": second.id, **s} for s in steps])) == 3
    )
    assert statements.bulk_insert(TraceStep, []) is None
    with pytest.raises(ValueError, match="same|every row"):
        statements.bulk_insert(TraceStep, [{"job": second.id, **steps[0]}, steps[1]])

    def rows(job):
        return [row(TraceStep, pk, ("id", "job")) for pk in job.trace_steps.values_list("pk", flat=True)]

    assert rows(second) == rows(first) and len(rows(second)) == 3


def test_the_sql_is_written_once_per_vendor_and_row_count(user):
    job = running_job(user)
    statements._SQL.clear()
    for attempt, count in enumerate((1, 2, 2), start=1):
        steps = [
            {
                "job": job.id,
                "attempt": attempt,
                "position": p,
                "name": "x",
                "started_at": VALUES["finished_at"],
            }
            | {"duration_ms": 1.0, "inputs": {}, "outputs": {}}
            for p in range(count)
        ]
        assert statements.execute(statements.bulk_insert(TraceStep, steps)) == count
    names = ("job", "attempt", "position", "name", "started_at", "duration_ms", "inputs", "outputs")
    assert set(statements._SQL) == {(TraceStep, connection.vendor, names, n) for n in (1, 2)}
    assert job.trace_steps.count() == 5
