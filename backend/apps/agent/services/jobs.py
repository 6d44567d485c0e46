"""Services that write agent jobs: create, enqueue, cancel, sweep, and the synchronous run.

Running a queued job (claim, pipeline, finish) is `job_execution.py`. The job row is the truth.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from agent import pipeline
from agent.config import LLMSettings
from agent.cost_policy import CostDecision, resolve_cost_decision
from agent.errors import ImproperlyConfigured
from agent.llm_factory import build_llm_runnable
from agent.types import AgentOptions, AgentResult
from apps.agent.models import TERMINAL_STATUSES, AgentJob, Batch, JobStatus
from apps.agent.services import budgets, fairness, job_events, job_execution, key_vault, spend
from apps.agent.services.events import batch_completion_check
from apps.agent.services.rate_limit import provider_limiter
from apps.core import publish
from core.errors import Conflict, IdempotencyMismatch, ServiceUnavailable, ValidationFailed

logger = logging.getLogger(__name__)

# --- submission -----------------------------------------------------------------------------------


def cost_decision_resolve(
    *, byo_api_key: str | None, overrides: dict[str, Any] | None = None
) -> CostDecision:
    """Resolve the cost policy for a submission. Raises `ValidationFailed` (400) when a key is required."""
    try:
        return resolve_cost_decision(byo_api_key or None, llm_settings(overrides))
    except ImproperlyConfigured as exc:
        raise ValidationFailed(str(exc), code="byo_key_required") from None


def llm_settings(overrides: dict[str, Any] | None = None) -> LLMSettings:
    """The process LLM settings with per-job overrides (model, cost mode) applied."""
    base: LLMSettings = settings.LLM
    overrides = overrides or {}
    changes: dict[str, Any] = {}
    if overrides.get("model"):
        changes["model"] = overrides["model"]
    if overrides.get("cost_mode"):
        changes["cost_mode"] = type(base.cost_mode)(overrides["cost_mode"])
    return dataclasses.replace(base, **changes) if changes else base


def request_fingerprint(payload: dict[str, Any]) -> str:
    """A stable hash of a request body, to tell an idempotent repeat from a different request."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def job_create(
    *,
    owner,
    query: str,
    options: AgentOptions,
    webhook_url: str = "",
    idempotency_key: str = "",
    byo_api_key: str | None = None,
    overrides: dict[str, Any] | None = None,
    parent: AgentJob | None = None,
    batch: Batch | None = None,
    enqueue: bool = True,
) -> tuple[AgentJob, bool]:
    """Create a queued job and enqueue it after commit. Returns (job, created).

    A repeat with the same `idempotency_key` and body returns the existing job (created=False); with a
    different body it raises `IdempotencyMismatch`. Raises `ValidationFailed` when the cost policy
    needs a key that was not given, and `ServiceUnavailable` when a BYO key cannot be handed off.
    """
    query = query.strip()
    fingerprint = request_fingerprint(
        {
            "query": query,
            "options": options.to_dict(),
            "webhook_url": webhook_url,
            "overrides": overrides or {},
        }
    )
    # No lookup of the Idempotency-Key first: the unique constraint on (owner, key) tells a repeat from a
    # new request at the INSERT, so a new job (the common case) costs no extra query.
    try:
        decision = cost_decision_resolve(byo_api_key=byo_api_key, overrides=overrides)
        if batch is None:  # a batch is admitted whole, with its worst case (batch_create)
            budgets.budget_admit(owner=owner, decision=decision)
    except (ValidationFailed, budgets.BudgetExceeded):
        existing = _job_by_idempotency_key(owner, idempotency_key)
        if existing is None:
            raise
        return _idempotent_repeat(existing, fingerprint), False
    job_id = uuid.uuid4()
    # Over a per-user cap, the job waits in its owner's line unpublished (services/fairness.py).
    admit = enqueue and fairness.user_cap(owner_id=owner.pk, batch=batch is not None) is not None
    if decision.key_source == "user":
        # Stored before the row exists: if Redis is down we refuse the job rather than lose the key.
        try:
            key_vault.key_put(job_id=job_id, api_key=byo_api_key or "")
        except key_vault.KeyVaultUnavailable:
            raise ServiceUnavailable(
                "The key hand-off store is unavailable; retry later.", code="key_vault_unavailable"
            ) from None

    created = False
    try:
        try:
            with transaction.atomic():
                job = AgentJob.objects.create(
                    id=job_id,
                    owner=owner,
                    query=query,
                    options=options.to_dict(),
                    timeout_sec=settings.AGENT_JOB_TIMEOUT_SEC,
                    cost_mode=decision.mode,
                    key_source=decision.key_source,
                    provider=decision.provider,
                    model=decision.model,
                    parent=parent,
                    batch=batch,
                    webhook_url=webhook_url,
                    idempotency_key=idempotency_key,
                    request_fingerprint=fingerprint,
                    # Marked as published in the INSERT rather than by an UPDATE after the publish: one
                    # write less per job. A refused publish clears the mark (`_job_publish_created`); a
                    # process that dies between commit and publish leaves the job to the sweep's
                    # stale-queue rule.
                    enqueued_at=timezone.now() if enqueue and not admit else None,
                )
                if admit:
                    transaction.on_commit(
                        lambda: fairness.admit_and_publish(
                            owner_id=job.owner_id, batch=job.batch_id is not None
                        )
                    )
                elif enqueue:
                    transaction.on_commit(lambda: _job_publish_created(job))
            created = True
        except DatabaseError:
            # The Idempotency-Key was used before (or by a concurrent request that won the insert).
            existing = _job_by_idempotency_key(owner, idempotency_key)
            if existing is not None:
                return _idempotent_repeat(existing, fingerprint), False
            raise
    finally:
        if not created and decision.key_source == "user":
            # No job of this id will ever run (a repeat, or the INSERT failed): its key goes now.
            key_vault.key_delete(job_id=job_id)
    return job, True


def _job_by_idempotency_key(owner, idempotency_key: str) -> AgentJob | None:
    if not idempotency_key:
        return None
    return AgentJob.objects.filter(owner=owner, idempotency_key=idempotency_key).first()


def _idempotent_repeat(existing: AgentJob, fingerprint: str) -> AgentJob:
    if existing.request_fingerprint != fingerprint:
        raise IdempotencyMismatch("This Idempotency-Key was used with a different request body.")
    return existing


def job_enqueue(*, job: AgentJob) -> bool:
    """Publish the job's task. Returns False (and leaves the job for the sweep) when the broker is down."""
    if not _job_publish(job):
        return False
    AgentJob.objects.filter(id=job.id, status=JobStatus.QUEUED).update(enqueued_at=timezone.now())
    return True


def _run_task_name(job: AgentJob) -> str:
    return publish.BATCH_JOB_RUN if job.batch_id else publish.JOB_RUN


def _job_publish(job: AgentJob) -> bool:
    try:
        publish.task_publish(_run_task_name(job), args=[str(job.id)])
    except Exception as exc:  # broker down: the sweep enqueues queued jobs that were never published
        logger.warning("could not enqueue job %s (%s); the sweep will retry", job.id, type(exc).__name__)
        return False
    return True


def _job_publish_created(job: AgentJob) -> None:
    """After the creating transaction: publish a job whose row already carries `enqueued_at`.

    When the broker refuses, the mark is cleared so that the sweep publishes the job on its next run.
    The `queued` event is written first, so that it comes before anything a worker writes.
    """
    job_events.jobs_queued(job_ids=[job.id])
    if not _job_publish(job):
        AgentJob.objects.filter(id=job.id, status=JobStatus.QUEUED).update(enqueued_at=None)


def jobs_enqueue(*, jobs: Sequence[AgentJob]) -> int:
    """Publish many jobs' tasks at once: one broker connection, pipelined on Redis, one UPDATE.

    For batches (hundreds of jobs created together). Returns how many were published; when the broker
    fails, the jobs not published keep `enqueued_at` empty and the sweep publishes them.
    """
    job_events.jobs_queued(job_ids=[job.id for job in jobs])
    admitted = 0
    capped = {(job.owner_id, job.batch_id is not None) for job in jobs}
    capped = {kind for kind in capped if fairness.user_cap(owner_id=kind[0], batch=kind[1]) is not None}
    if capped:  # over a per-user cap, jobs wait in their owners' lines: admit what fits
        admitted = sum(
            fairness.admit_and_publish(owner_id=owner_id, batch=batch)
            for owner_id, batch in sorted(capped, key=str)
        )
        jobs = [job for job in jobs if (job.owner_id, job.batch_id is not None) not in capped]
        if not jobs:
            return admitted
    if publish.publishing_is_eager():  # tests and CELERY_TASK_ALWAYS_EAGER: nothing to publish
        return admitted + sum(job_enqueue(job=job) for job in jobs)
    published: list[uuid.UUID] = []
    try:
        with publish.producer_batch() as producer:
            for job in jobs:
                publish.task_publish(_run_task_name(job), args=[str(job.id)], producer=producer)
                published.append(job.id)
    except Exception as exc:  # broker down: a failed pipeline flush publishes none of the buffered jobs
        logger.warning("could not enqueue %d jobs (%s); the sweep will retry", len(jobs), type(exc).__name__)
        return admitted
    now = timezone.now()
    for start in range(0, len(published), 500):  # stay under SQLite's bound-parameter limit
        chunk = published[start : start + 500]
        AgentJob.objects.filter(id__in=chunk, status=JobStatus.QUEUED).update(enqueued_at=now)
    return admitted + len(published)


# --- cancel, sweep ----------------------------------------------------------------------------------


def job_cancel(*, job: AgentJob) -> AgentJob:
    """Cancel a job: queued → cancelled at once; running → cancelled at the next step boundary.

    Raises `Conflict` (409) when the job already ended.
    """
    queued = AgentJob.objects.filter(id=job.id, status=JobStatus.QUEUED)
    if job_execution.job_end(queued, job_id=job.id, status=JobStatus.CANCELLED, cancel_requested=True):
        job.refresh_from_db()
        return job
    changed = AgentJob.objects.filter(id=job.id, status=JobStatus.RUNNING).update(cancel_requested=True)
    job.refresh_from_db()
    if not changed and job.is_terminal:
        raise Conflict(f"The job already ended with status {job.status}.", code="job_terminal")
    return job


def jobs_sweep() -> dict[str, int]:
    """Make sure no job waits forever: enqueue queued jobs nobody picked up; recover abandoned running ones.

    Returns counts of what it did. Safe to run concurrently with workers (claims are conditional).
    """
    now = timezone.now()
    stale_queue = now - timedelta(seconds=settings.AGENT_QUEUED_STALE_SEC)
    # Batch jobs legitimately wait behind the rest of their batch (low priority): a longer threshold
    # keeps a long batch from being re-published, i.e. duplicated, every AGENT_QUEUED_STALE_SEC.
    stale_batch_queue = now - timedelta(seconds=settings.AGENT_BATCH_QUEUED_STALE_SEC)
    counts = {"enqueued": 0, "recovered": 0, "failed": 0}
    never_published = Q(enqueued_at__isnull=True, created_at__lt=now - timedelta(seconds=2))
    # A kind under a per-user cap (of anyone's): its unpublished jobs wait for admission, not for a blind
    # publish; admission publishes an uncapped owner's whole line.
    for batch in (False, True):
        if fairness.kind_capped(batch=batch):
            never_published &= Q(batch__isnull=batch)
            for owner_id in fairness.waiting_owners(batch=batch, created_before=now - timedelta(seconds=2)):
                counts["enqueued"] += fairness.admit_and_publish(owner_id=owner_id, batch=batch)
    queued = AgentJob.objects.filter(status=JobStatus.QUEUED).filter(
        never_published
        | Q(enqueued_at__lt=stale_queue, batch__isnull=True)
        | Q(enqueued_at__lt=stale_batch_queue, batch__isnull=False)
    )
    for job in queued.only("id", "batch_id")[:1000]:
        if job_enqueue(job=job):
            counts["enqueued"] += 1
    running = AgentJob.objects.filter(status=JobStatus.RUNNING).only(
        "id", "timeout_sec", "heartbeat_at", "attempts", "attempts_handed_back", "batch_id", "claimed_by"
    )
    for job in job_execution.attempts_lost(list(running[:1000])):
        if job_execution.attempts_used_up(job):
            rows = job_execution.attempt_rows(job.id, job.attempts)
            error = job_execution.max_attempts_error(job.attempts)
            if job_execution.job_end(rows, job_id=job.id, status=JobStatus.FAILED, error=error):
                logger.warning(
                    "job %s: attempt %d presumed lost, the last allowed: failed", job.id, job.attempts
                )
                counts["failed"] += 1
        elif job_execution.job_release(job_id=job.id, attempt=job.attempts):
            logger.warning(
                "job %s: attempt %d presumed lost (no end by its deadline + AGENT_RUNNING_GRACE_SEC, its"
                " worker gone or hung); queued again",
                job.id,
                job.attempts,
            )
            counts["recovered"] += 1
            job_enqueue(job=job)
    counts["batches_completed"] = _batches_complete_left_over()
    counts["holds_renewed"] = budgets.batch_holds_renew()  # running batches keep their spending hold
    return counts


def _batches_complete_left_over() -> int:
    """Complete the batches with no job left to run that nothing completed: a batch is completed by the
    end of its last job, and a job deleted before its end (the admin) never ends. Returns how many."""
    unfinished = AgentJob.objects.filter(batch_id=OuterRef("pk")).exclude(status__in=TERMINAL_STATUSES)
    left_over = Batch.objects.filter(completed_at__isnull=True).exclude(Exists(unfinished))
    return sum(
        batch_completion_check(batch_id=batch_id) for batch_id in left_over.values_list("id", flat=True)[:100]
    )


# --- synchronous run (POST /api/agent/) ---------------------------------------------------------------


def agent_run_sync(
    *, query: str, options: AgentOptions, byo_api_key: str | None, owner=None
) -> tuple[AgentResult, CostDecision]:
    """Run the pipeline within the request, bounded by the same job timeout. Stores no job.

    With an `owner`, a paid call is held to their budgets like a job's (`BudgetExceeded` when spent), and
    what it cost the server's key is recorded (`SyncCall`), as a job's row records it."""
    decision = cost_decision_resolve(byo_api_key=byo_api_key)
    llm = build_llm_runnable(
        byo_api_key=byo_api_key if decision.key_source == "user" else None,
        settings=settings.LLM,
        limiter=provider_limiter(),
    )
    if owner is not None:
        budgets.budget_admit(owner=owner, decision=decision)
        llm = budgets.budget_guard(llm, owner_id=owner.pk, decision=decision)
    deadline = time.monotonic() + settings.AGENT_JOB_TIMEOUT_SEC
    runtime = job_execution.runtime
    result = pipeline.run(
        query, options, llm, runtime.retriever(), deadline, exact_search=runtime.exact_search
    )
    if owner is not None:
        spend.sync_call_record(owner_id=owner.pk, decision=decision, result=result)
    return result, decision
