"""Selectors: read-only queries for jobs and batches, always scoped to their owner."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Count

from agent.types import TRACE_STEP_FIELDS
from apps.agent import comparison
from apps.agent.models import AgentJob, Batch, JobStatus
from core.errors import NotFound, ValidationFailed


def job_get(*, user, job_id: uuid.UUID) -> AgentJob:
    """The user's job, or `NotFound` (also for another user's job: no existence oracle)."""
    try:  # get(), not first(): no ORDER BY to build (the model's ordering) for a primary-key lookup
        return AgentJob.objects.get(id=job_id, owner=user)
    except AgentJob.DoesNotExist:
        raise NotFound("No such job.") from None


def job_list(*, user, status: str | None = None):
    qs = AgentJob.objects.filter(owner=user).order_by("-created_at", "id")
    if status is not None:  # "?status=" is a bad filter, not "no filter"
        if status not in JobStatus.values:
            raise ValidationFailed(f"Unknown status {status!r}.", details={"status": JobStatus.values})
        qs = qs.filter(status=status)
    return qs


def job_trace(*, job: AgentJob) -> list[dict]:
    """The trace of the job's last attempt, ordered: each step's `TRACE_STEP_FIELDS` and its attempt."""
    steps = job.trace_steps.filter(attempt=job.attempts).order_by("position")
    return list(steps.values("attempt", *TRACE_STEP_FIELDS))


# --- batches --------------------------------------------------------------------------------------


def batch_get(*, user, batch_id: uuid.UUID) -> Batch:
    """The user's batch, or `NotFound` (also for another user's batch)."""
    batch = Batch.objects.filter(id=batch_id, owner=user).first()
    if batch is None:
        raise NotFound("No such batch.")
    return batch


def batch_list(*, user):
    return Batch.objects.filter(owner=user).order_by("-created_at", "id")


def batch_progress_many(*, batch_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """Progress (counts by status) of several batches in one query, for a list page."""
    statuses: dict[uuid.UUID, list[str]] = {batch_id: [] for batch_id in batch_ids}
    rows = (
        AgentJob.objects.filter(batch_id__in=batch_ids)
        .order_by()
        .values_list("batch_id", "status")
        .annotate(n=Count("id"))
    )
    for batch_id, status, n in rows:
        statuses[batch_id].extend([status] * n)
    return {batch_id: comparison.progress(values) for batch_id, values in statuses.items()}


def _facts(job: AgentJob) -> comparison.JobFacts:
    result = job.result or {}
    return comparison.JobFacts(
        id=str(job.id),
        status=job.status,
        degraded=job.degraded,
        result_ids=tuple(str(r.get("id")) for r in result.get("results", [])),
        latency_ms=job.latency_ms,
        cost_usd=float(job.cost_usd),
        prompt_tokens=job.prompt_tokens,
        completion_tokens=job.completion_tokens,
        model=job.model,
        store_build=(job.vector_store or {}).get("build_id"),
        query=job.query,
    )


_FACT_FIELDS = (
    "id",
    "status",
    "degraded",
    "result",
    "latency_ms",
    "cost_usd",
    "prompt_tokens",
    "completion_tokens",
    "model",
    "vector_store",
    "query",
)


def batch_view(*, batch: Batch) -> dict[str, Any]:
    """Progress, totals, items and, once the batch is complete, the comparison with the parents.

    Two queries whatever the size: the batch's jobs, then their parents. `comparison` is None while
    jobs are left to run and for batches of new queries (nothing to compare with); each item's
    `comparison` likewise, and for a re-run whose original job was purged (retention): such an item has
    `parent_purged` true and counts in `parents_purged`.
    """
    jobs = list(
        AgentJob.objects.filter(batch=batch)
        .only(*_FACT_FIELDS, "parent_id", "batch_id", "created_at")
        .order_by("created_at", "id")
    )
    parent_ids = [job.parent_id for job in jobs if job.parent_id]
    parents = {
        job.id: _facts(job)
        for job in AgentJob.objects.filter(id__in=parent_ids, owner_id=batch.owner_id).only(*_FACT_FIELDS)
    }
    facts = [_facts(job) for job in jobs]
    state = comparison.progress(f.status for f in facts)
    complete = batch.completed_at is not None
    items: list[dict[str, Any]] = []
    pairs = []
    # Every job of a re-run batch had a parent; purging the parent set `parent_id` to NULL.
    reruns = batch.source == "jobs"
    for position, (job, rerun) in enumerate(zip(jobs, facts, strict=True), start=1):
        parent = parents.get(job.parent_id) if job.parent_id else None
        compared = None
        if complete and parent is not None:
            compared = comparison.item_compare(parent=parent, rerun=rerun)
            pairs.append((parent, rerun, compared))
        items.append(
            {
                "position": position,
                "job_id": job.id,
                "parent_id": job.parent_id,
                "parent_purged": reruns and parent is None,
                "query": rerun.query,
                "status": rerun.status,
                "degraded": rerun.degraded,
                "result_ids": list(rerun.result_ids),
                "latency_ms": None if rerun.latency_ms is None else round(rerun.latency_ms, 1),
                "cost_usd": round(rerun.cost_usd, 6),
                "model": rerun.model,
                "comparison": compared,
            }
        )
    return {
        "progress": state,
        "totals": comparison.totals(facts),
        "comparison": comparison.summary(pairs) if pairs else None,
        "parents_purged": sum(1 for item in items if item["parent_purged"]),
        "items": items,
    }
