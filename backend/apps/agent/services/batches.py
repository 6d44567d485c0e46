"""Services that write batches: create (queries or re-runs of past jobs), cancel, complete.

A batch is a group of ordinary jobs (`job_create` with `batch` and `parent` set), created in one
transaction and published together after commit. Its jobs run on the `batch` queue at a low priority
(settings.AGENT_BATCH_PRIORITY), so that interactive jobs are served first. Completion is detected
when a batch's last job ends.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from agent.types import AgentOptions, Filters
from apps.agent.models import TERMINAL_STATUSES, AgentJob, Batch, JobStatus
from apps.agent.services import budgets, fairness, retrieval, spend
from apps.agent.services import jobs as job_services
from apps.agent.services.events import batch_completion_check
from core.errors import Conflict, IdempotencyMismatch, ValidationFailed

#: Overrides that change how the LLM is called; passed to `job_create` as its `overrides`.
LLM_OVERRIDES = ("model", "cost_mode")


@dataclass(frozen=True)
class JobFilter:
    """Which of the owner's past jobs to re-run. Only finished jobs are selected."""

    status: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    degraded_only: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "created_after": self.created_after.isoformat() if self.created_after else None,
            "created_before": self.created_before.isoformat() if self.created_before else None,
            "degraded_only": self.degraded_only,
        }


@dataclass(frozen=True)
class _Item:
    query: str
    options: AgentOptions
    parent: AgentJob | None


def batch_create(
    *,
    owner,
    queries: list[str] | None = None,
    job_ids: list[uuid.UUID] | None = None,
    job_filter: JobFilter | None = None,
    overrides: dict[str, Any] | None = None,
    webhook_url: str = "",
    idempotency_key: str = "",
) -> tuple[Batch, bool]:
    """Create a batch of jobs from new queries, explicit past jobs, or a filter over past jobs.

    Exactly one of `queries`, `job_ids`, `job_filter`. `overrides` may hold model, cost_mode, top_k,
    filters and vector_store_build (already validated for shape). Returns (batch, created); a repeat
    with the same `idempotency_key` and body returns the existing batch (created=False).

    Raises `ValidationFailed` (400) with a specific code: `invalid_selection`, `batch_empty`,
    `batch_too_large` (details: count, max), `jobs_not_found` (details: missing ids; another user's
    job counts as missing), `jobs_not_finished`, `byo_key_not_supported`, `byo_key_required`,
    `unknown_vector_store_build`, `budget_unpriced_model`; `IdempotencyMismatch` (422) for a reused key
    with another body; `BudgetExceeded` (429) when the batch's worst-case cost (stored on the batch as
    `estimated_cost_usd`) does not fit in what is left of a budget.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v not in (None, "")}
    given = [
        name
        for name, value in (("queries", queries), ("jobs", job_ids), ("filter", job_filter))
        if value is not None
    ]
    if len(given) != 1:
        raise ValidationFailed(
            "Give exactly one of queries, jobs or filter.", code="invalid_selection", details={"given": given}
        )
    source = "queries" if queries is not None else "jobs"
    if job_ids is not None:
        job_ids = list(dict.fromkeys(job_ids))  # repeated ids count once, first position wins
        selection: dict[str, Any] = {"ids": [str(i) for i in job_ids]}
    elif job_filter is not None:
        selection = {"filter": job_filter.to_dict()}
    else:
        selection = {"queries": len(queries or [])}
    fingerprint = job_services.request_fingerprint(
        {
            "queries": queries,
            "selection": selection,
            "overrides": overrides,
            "webhook_url": webhook_url,
        }
    )
    if idempotency_key:
        existing = Batch.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _idempotent_repeat(existing, fingerprint), False

    _overrides_check(overrides)
    if queries is not None:
        items = _items_from_queries(queries, overrides)
    elif job_ids is not None:
        items = _items_from_ids(owner, job_ids, overrides)
    else:
        assert job_filter is not None
        items = _items_from_filter(owner, job_filter, overrides)
    if job_filter is not None:
        selection["matched"] = len(items)

    llm_overrides = {k: overrides[k] for k in LLM_OVERRIDES if k in overrides}
    # The batch is admitted whole: its worst case must fit in what is left of every budget (429 if not),
    # and is held there, so that what was accepted can run; its jobs reserve from the hold.
    decision = job_services.cost_decision_resolve(byo_api_key=None, overrides=llm_overrides)
    estimate = budgets.batch_worst_case(
        decision=decision, items=[(item.query, item.options.top_k) for item in items]
    )
    batch_id = uuid.uuid4()
    held = budgets.batch_hold(owner=owner, decision=decision, batch_id=batch_id, amount_usd=estimate)
    try:
        with transaction.atomic():
            batch = Batch.objects.create(
                id=batch_id,
                owner=owner,
                source=source,
                selection=selection,
                overrides=overrides,
                size=len(items),
                estimated_cost_usd=None if estimate is None else spend.usd_amount(estimate),
                webhook_url=webhook_url,
                idempotency_key=idempotency_key,
                request_fingerprint=fingerprint,
            )
            # Ordinary jobs, so that polling, traces, cancel and the sweep apply unchanged. No webhook
            # or BYO key per job: the batch has its own event, and a key would expire in the queue.
            created = [
                job_services.job_create(
                    owner=owner,
                    query=item.query,
                    options=item.options,
                    overrides=llm_overrides,
                    parent=item.parent,
                    batch=batch,
                    enqueue=False,
                )[0]
                for item in items
            ]
            transaction.on_commit(lambda: job_services.jobs_enqueue(jobs=created))
    except BaseException as exc:
        if held:  # nothing was created: nothing may stay held
            budgets.batch_hold_release(batch_id=batch_id)
        if not isinstance(exc, IntegrityError):
            raise
        # A concurrent request with the same idempotency key won the insert.
        if idempotency_key:
            existing = Batch.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
            if existing is not None:
                return _idempotent_repeat(existing, fingerprint), False
        _parents_check(items)
        raise
    return batch, True


def _parents_check(items: list[_Item]) -> None:
    """After a failed commit: a parent deleted since the selection was read (a retention purge between the
    two) fails its re-run's foreign key. Raises `jobs_not_found`, as for a selection naming a job that
    does not exist, instead of the IntegrityError (a 500)."""
    parents = {str(item.parent.id) for item in items if item.parent is not None}
    left = {str(i) for i in AgentJob.objects.filter(id__in=parents).values_list("id", flat=True)}
    if gone := sorted(parents - left):
        raise ValidationFailed(
            f"{len(gone)} of the selected jobs were deleted while the batch was created; select again.",
            code="jobs_not_found",
            details={"missing": gone},
        ) from None


def _idempotent_repeat(existing: Batch, fingerprint: str) -> Batch:
    if existing.request_fingerprint != fingerprint:
        raise IdempotencyMismatch("This Idempotency-Key was used with a different request body.")
    return existing


def _overrides_check(overrides: dict[str, Any]) -> None:
    """Refuse what a batch cannot honour, before anything is written."""
    if overrides.get("cost_mode") == "byo_key":
        raise ValidationFailed(
            "Batches cannot use cost_mode byo_key: a key handed off per job would expire while the "
            "batch waits in its queue. Use paid or hybrid (the server key).",
            code="byo_key_not_supported",
            details={"field": "overrides.cost_mode"},
        )
    # The same decision every job of the batch will record; raises byo_key_required (400) when the
    # server runs with LLM_COST_MODE=byo_key and no override.
    job_services.cost_decision_resolve(
        byo_api_key=None, overrides={k: overrides[k] for k in LLM_OVERRIDES if k in overrides}
    )
    build = overrides.get("vector_store_build")
    if build:
        current = retrieval.store_identity().get("build_id")
        if build != current:
            # One store per process (VECTOR_DB_DIR / VECTOR_DB_URL): a job cannot pick another build.
            raise ValidationFailed(
                f"Unknown vector store build {build!r}: the deployed build is {current!r}.",
                code="unknown_vector_store_build",
                details={"field": "overrides.vector_store_build", "available": [current] if current else []},
            )


def _size_check(count: int) -> None:
    if count == 0:
        raise ValidationFailed("The selection is empty: there is nothing to run.", code="batch_empty")
    if count > settings.AGENT_BATCH_MAX_SIZE:
        raise ValidationFailed(
            f"The selection has {count} jobs; a batch holds at most {settings.AGENT_BATCH_MAX_SIZE}.",
            code="batch_too_large",
            details={"count": count, "max": settings.AGENT_BATCH_MAX_SIZE},
        )


def _options(base: dict[str, Any] | None, overrides: dict[str, Any]) -> AgentOptions:
    """A job's options with the batch's overrides applied; `filters` replaces the filters whole. The rest
    (the answer language the original asked for) is kept: a re-run differs by its overrides only."""
    options = (
        AgentOptions.from_dict(base) if base is not None else AgentOptions(top_k=settings.AGENT_TOP_K_DEFAULT)
    )
    return dataclasses.replace(
        options,
        top_k=overrides.get("top_k", options.top_k),
        filters=Filters.from_dict(overrides["filters"]) if "filters" in overrides else options.filters,
    )


def _items_from_queries(queries: list[str], overrides: dict[str, Any]) -> list[_Item]:
    _size_check(len(queries))
    options = _options(None, overrides)
    return [_Item(query=q, options=options, parent=None) for q in queries]


_PARENT_FIELDS = ("id", "query", "options", "status", "created_at")


def _items_from_ids(owner, job_ids: list[uuid.UUID], overrides: dict[str, Any]) -> list[_Item]:
    _size_check(len(job_ids))
    found = {
        job.id: job for job in AgentJob.objects.filter(owner=owner, id__in=job_ids).only(*_PARENT_FIELDS)
    }
    missing = [str(i) for i in job_ids if i not in found]
    if missing:
        # Another user's job is reported exactly like a job that does not exist: no existence oracle.
        raise ValidationFailed(
            f"{len(missing)} of the selected jobs do not exist.",
            code="jobs_not_found",
            details={"missing": missing},
        )
    unfinished = [str(i) for i in job_ids if found[i].status not in TERMINAL_STATUSES]
    if unfinished:
        raise ValidationFailed(
            f"{len(unfinished)} of the selected jobs have not finished; re-run finished jobs only.",
            code="jobs_not_finished",
            details={"not_finished": unfinished},
        )
    return [
        _Item(query=found[i].query, options=_options(found[i].options, overrides), parent=found[i])
        for i in job_ids
    ]


def _items_from_filter(owner, job_filter: JobFilter, overrides: dict[str, Any]) -> list[_Item]:
    qs = AgentJob.objects.filter(owner=owner, status__in=TERMINAL_STATUSES)
    if job_filter.status:
        qs = qs.filter(status=job_filter.status)
    if job_filter.created_after:
        qs = qs.filter(created_at__gte=job_filter.created_after)
    if job_filter.created_before:
        qs = qs.filter(created_at__lt=job_filter.created_before)
    if job_filter.degraded_only:
        qs = qs.filter(degraded=True)
    # One row more than allowed tells "too large" without counting a huge history.
    parents = list(qs.order_by("created_at", "id").only(*_PARENT_FIELDS)[: settings.AGENT_BATCH_MAX_SIZE + 1])
    if len(parents) > settings.AGENT_BATCH_MAX_SIZE:
        _size_check(qs.count())
    _size_check(len(parents))
    return [_Item(query=p.query, options=_options(p.options, overrides), parent=p) for p in parents]


def batch_cancel(*, batch: Batch) -> Batch:
    """Cancel what has not finished: queued jobs → cancelled now; running jobs → cancel requested.

    Idempotent while the batch runs. Raises `Conflict` (409) when the batch already completed.
    """
    if batch.completed_at is not None and batch.cancelled_at is None:
        raise Conflict("The batch already completed.", code="batch_completed")
    now = timezone.now()
    with transaction.atomic():
        # Job rows first, the batch row last: the order in which a finishing job locks them too.
        AgentJob.objects.filter(batch=batch, status=JobStatus.QUEUED).update(
            status=JobStatus.CANCELLED, finished_at=now, cancel_requested=True
        )
        AgentJob.objects.filter(batch=batch, status=JobStatus.RUNNING).update(cancel_requested=True)
        Batch.objects.filter(id=batch.id, completed_at__isnull=True, cancelled_at__isnull=True).update(
            cancelled_at=now
        )
        # Batch jobs have no webhook or BYO key of their own (batch_create), so the only terminal
        # effects of the jobs cancelled above are the batch's completion and, under a per-user cap, the
        # admission of the owner's other waiting batch jobs into the slots they held.
        batch_completion_check(batch_id=batch.id)
        # Its jobs that will not run release their share of the batch's hold now; the running ones hold
        # their own reservations until they settle.
        batch_id = batch.id
        transaction.on_commit(lambda: budgets.batch_hold_release(batch_id=batch_id))
        owner_id = batch.owner_id
        if fairness.user_cap(owner_id=owner_id, batch=True) is not None:
            transaction.on_commit(lambda: fairness.admit_and_publish(owner_id=owner_id, batch=True))
    batch.refresh_from_db()
    if batch.cancelled_at is None:  # it completed between our read and our update
        raise Conflict("The batch already completed.", code="batch_completed")
    return batch
