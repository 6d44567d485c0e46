"""Services that write agent jobs: create, enqueue, run, cancel, sweep.

The job row is the truth. Work is claimed with conditional updates so that a redelivered Celery
message, the periodic sweep and a second worker can never run one attempt twice.
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
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from agent import pipeline
from agent.config import LLMSettings
from agent.cost_policy import CostDecision, resolve_cost_decision
from agent.errors import Cancelled, ImproperlyConfigured
from agent.llm_factory import build_llm_runnable, stream_llm
from agent.types import AgentOptions, AgentResult
from apps.agent.models import AgentJob, Batch, JobStatus, TraceStep
from apps.agent.services import job_events, key_vault
from apps.agent.services.events import job_terminal_event
from apps.agent.services.retrieval import exact_search, get_retriever, store_identity
from apps.core import publish
from core.errors import Conflict, IdempotencyMismatch, ServiceUnavailable, ValidationFailed

logger = logging.getLogger(__name__)

#: A running job asks its row whether it was cancelled at most this often (at step boundaries).
CANCEL_CHECK_INTERVAL_SEC = 0.2

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
    except ValidationFailed:
        existing = _job_by_idempotency_key(owner, idempotency_key)
        if existing is None:
            raise
        return _idempotent_repeat(existing, fingerprint), False
    job_id = uuid.uuid4()
    if decision.key_source == "user":
        # Stored before the row exists: if Redis is down we refuse the job rather than lose the key.
        try:
            key_vault.key_put(job_id=job_id, api_key=byo_api_key or "")
        except key_vault.KeyVaultUnavailable:
            raise ServiceUnavailable(
                "The key hand-off store is unavailable; retry later.", code="key_vault_unavailable"
            ) from None

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
                # Marked as published in the INSERT rather than by an UPDATE after the publish: one write
                # less per job. A refused publish clears the mark (`_job_publish_created`); a process that
                # dies between commit and publish leaves the job to the sweep's stale-queue rule.
                enqueued_at=timezone.now() if enqueue else None,
            )
            if enqueue:
                transaction.on_commit(lambda: _job_publish_created(job))
    except DatabaseError:
        # The Idempotency-Key was used before (or by a concurrent request that won the insert).
        existing = _job_by_idempotency_key(owner, idempotency_key)
        if existing is not None:
            if decision.key_source == "user":
                key_vault.key_delete(job_id=job_id)
            return _idempotent_repeat(existing, fingerprint), False
        raise
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
    if publish.publishing_is_eager():  # tests and CELERY_TASK_ALWAYS_EAGER: nothing to publish
        return sum(job_enqueue(job=job) for job in jobs)
    published: list[uuid.UUID] = []
    try:
        with publish.producer_batch() as producer:
            for job in jobs:
                publish.task_publish(_run_task_name(job), args=[str(job.id)], producer=producer)
                published.append(job.id)
    except Exception as exc:  # broker down: a failed pipeline flush publishes none of the buffered jobs
        logger.warning("could not enqueue %d jobs (%s); the sweep will retry", len(jobs), type(exc).__name__)
        return 0
    now = timezone.now()
    for start in range(0, len(published), 500):  # stay under SQLite's bound-parameter limit
        chunk = published[start : start + 500]
        AgentJob.objects.filter(id__in=chunk, status=JobStatus.QUEUED).update(enqueued_at=now)
    return len(published)


# --- running --------------------------------------------------------------------------------------


def _stale_before(job_timeout: float) -> Any:
    return timezone.now() - timedelta(seconds=job_timeout + settings.AGENT_RUNNING_GRACE_SEC)


def job_claim(*, job_id: uuid.UUID | str) -> AgentJob | None:
    """Move a job to `running` for a new attempt, or return None if it is not ours to run.

    Claims a queued job, or a running one whose attempt outlived its deadline plus a grace period
    (its worker vanished). A job that has used `AGENT_MAX_ATTEMPTS` is failed with `max_attempts`.
    """
    now = timezone.now()
    # The common case first, in one conditional UPDATE: a queued job with attempts left. Only when it
    # changes nothing is the row read to tell a stale attempt, an exhausted job and a lost race apart.
    claimed = AgentJob.objects.filter(
        id=job_id, status=JobStatus.QUEUED, attempts__lt=settings.AGENT_MAX_ATTEMPTS
    ).update(status=JobStatus.RUNNING, attempts=F("attempts") + 1, heartbeat_at=now, started_at=now)
    if claimed:
        return AgentJob.objects.get(id=job_id)
    job = AgentJob.objects.filter(id=job_id).only("id", "status", "attempts", "timeout_sec").first()
    if job is None or job.is_terminal:
        return None
    claimable = Q(status=JobStatus.QUEUED) | Q(
        status=JobStatus.RUNNING, heartbeat_at__lt=_stale_before(job.timeout_sec)
    )
    base = AgentJob.objects.filter(claimable, id=job_id, attempts=job.attempts)
    if job.attempts >= settings.AGENT_MAX_ATTEMPTS:
        _job_end(base, job_id=job.id, status=JobStatus.FAILED, error=_max_attempts_error(job.attempts))
        return None
    changed = base.update(
        status=JobStatus.RUNNING, attempts=F("attempts") + 1, heartbeat_at=now, started_at=now
    )
    if not changed:
        return None
    return AgentJob.objects.get(id=job_id)


def job_run(*, job_id: uuid.UUID | str) -> str | None:
    """Claim and run one attempt of a job, storing result and trace in one transaction.

    Returns the job's final status, or None when the job was not claimed (already running elsewhere,
    terminal, or cancelled). Never raises for agent failures: they are stored on the job.
    """
    job = job_claim(job_id=job_id)
    if job is None:
        return None
    attempt = job.attempts
    deadline = time.monotonic() + job.timeout_sec
    events = job_events.AttemptEvents(job_id=job.id, attempt=attempt)
    events("started", {})

    byo_key = None
    if job.key_source == "user":
        byo_key = key_vault.key_get(job_id=job.id)
        if not byo_key:
            return _job_finish_failed(
                job,
                attempt,
                {
                    "code": "byo_key_unavailable",
                    "message": "The job's API key expired before it ran; submit again.",
                },
            )
    llm = _JobLLM(
        _runnable_for(job, byo_key), release_connection=bool(connection.settings_dict["OPTIONS"].get("pool"))
    )
    options = AgentOptions.from_dict(job.options)

    # The claim just read `cancel_requested`. Before the LLM call the row is asked again at a step
    # boundary only when CANCEL_CHECK_INTERVAL_SEC has passed (retrieval and the prompt take milliseconds,
    # so usually never; a slow vector store still does not lead to a paid call for a cancelled job).
    # After the call nobody asks: the finish's conditional UPDATE requires `cancel_requested=False`, and a
    # cancel that arrived meanwhile turns the finish into a cancellation, with no query of its own.
    # While the answer streams, the row is asked at the same pace between deltas: a cancel closes the
    # provider's stream, which stops the paid generation.
    checked = {"at": time.monotonic(), "cancelled": job.cancel_requested}

    def is_cancelled() -> bool:
        if checked["cancelled"] or (llm.called and not llm.streaming):
            return checked["cancelled"]
        if time.monotonic() - checked["at"] >= CANCEL_CHECK_INTERVAL_SEC:
            checked["cancelled"] = AgentJob.objects.filter(id=job.id, cancel_requested=True).exists()
            checked["at"] = time.monotonic()
        return checked["cancelled"]

    try:
        result = pipeline.run(
            job.query,
            options,
            llm,
            get_retriever(),
            deadline,
            exact_search=exact_search,
            is_cancelled=is_cancelled,
            on_event=events,
        )
    except Cancelled:
        events.flush()
        return _job_finish_cancelled(job, attempt)
    events.flush()
    return _job_finish(job, attempt, result)


class _JobLLM:
    """The job's LLM runnable, remembering that it was called, and with `release_connection` handing
    this thread's database connection back to the pool first.

    A job waits seconds on the provider; holding a pooled connection meanwhile would cap the jobs in
    flight at the pool size (DB_POOL_MAX_SIZE), or need one PostgreSQL connection per worker thread. The
    next query takes a connection from the pool again. Only with a pool: without one, reopening a
    connection would cost more than keeping it.
    """

    def __init__(self, inner: Any, *, release_connection: bool = False):
        self._inner = inner
        self._release_connection = release_connection
        self.called = False
        self.streaming = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def invoke(self, prompt: Any, *, deadline: float | None = None) -> dict[str, Any]:
        self._before_call()
        return self._inner.invoke(prompt, deadline=deadline)

    def stream(self, prompt: Any, *, on_delta: Any, deadline: float | None = None) -> dict[str, Any]:
        self._before_call()
        self.streaming = True
        try:
            return stream_llm(self._inner, prompt, on_delta=on_delta, deadline=deadline)
        finally:
            self.streaming = False

    def _before_call(self) -> None:
        self.called = True
        if self._release_connection and not connection.in_atomic_block:  # eager tasks: caller's transaction
            connection.close()


def _runnable_for(job: AgentJob, byo_key: str | None):
    """Rebuild the runnable from the decision recorded at submission (reused on every retry)."""
    base: LLMSettings = settings.LLM
    changes: dict[str, Any] = {"model": job.model, "cost_mode": type(base.cost_mode)(job.cost_mode)}
    if job.provider == "stub":
        changes["provider"] = "stub"
    if job.key_source == "none":
        changes["api_key"] = None
    return build_llm_runnable(
        byo_api_key=byo_key if job.key_source == "user" else None,
        settings=dataclasses.replace(base, **changes),
    )


def _terminal_effects(*, job_id: uuid.UUID, status: str, job: AgentJob | None = None) -> None:
    """Inside the terminal transaction: queue the webhook event; after commit, write the final live event
    (which wakes the clients waiting on the job) and forget the BYO key.

    Given the claimed `job` (its webhook URL, batch and key source never change), the effects that cannot
    apply are skipped: no event lookup without a webhook or a batch, no Redis call without a BYO key.
    """
    if job is None or job.webhook_url or job.batch_id:
        job_terminal_event(job_id=job_id)
    transaction.on_commit(lambda: job_events.job_ended(job_id=job_id, status=status))
    if job is None or job.key_source == "user":
        transaction.on_commit(lambda: key_vault.key_delete(job_id=job_id))


def _job_finish(job: AgentJob, attempt: int, result: AgentResult) -> str | None:
    status = JobStatus.FAILED if result.error else JobStatus.SUCCEEDED
    now = timezone.now()
    finish = {
        "status": status,
        "degraded": result.degraded,
        "result": {"message": result.message, "results": result.results, "actions": result.actions},
        "error": result.error,
        "finished_at": now,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "usage_estimated": any(s.outputs.get("usage_estimated") for s in result.trace if s.name == "llm"),
        "cost_usd": Decimal(str(round(result.cost_usd, 6))),
        "latency_ms": (now - job.started_at).total_seconds() * 1000,
        "vector_store": store_identity(),
    }
    trace = [
        TraceStep.from_step(step, job_id=job.id, attempt=attempt, position=position)
        for position, step in enumerate(result.trace)
    ]
    with transaction.atomic():
        # Conditional: only the attempt that still owns the row, and only if no cancel arrived meanwhile.
        if _attempt_rows(job, attempt).filter(cancel_requested=False).update(**finish):
            TraceStep.objects.bulk_create(trace)
            _terminal_effects(job_id=job.id, status=status, job=job)
            return status
    # Nothing changed. A cancel arrived while the job ran (its answer is discarded), or another attempt
    # took over (we were presumed dead): only the first ends the job, as cancelled.
    cancelled = _attempt_rows(job, attempt).filter(cancel_requested=True)
    return JobStatus.CANCELLED if _job_end(cancelled, job=job, status=JobStatus.CANCELLED) else None


def _job_finish_failed(job: AgentJob, attempt: int, error: dict[str, Any]) -> str | None:
    failed = _job_end(_attempt_rows(job, attempt), job=job, status=JobStatus.FAILED, error=error)
    return JobStatus.FAILED if failed else None


def _job_finish_cancelled(job: AgentJob, attempt: int) -> str | None:
    cancelled = _job_end(_attempt_rows(job, attempt), job=job, status=JobStatus.CANCELLED)
    return JobStatus.CANCELLED if cancelled else None


def _attempt_rows(job: AgentJob, attempt: int) -> Any:
    """The job's row while `attempt` is the one running it (an update through it is conditional)."""
    return AgentJob.objects.filter(id=job.id, status=JobStatus.RUNNING, attempts=attempt)


def _job_end(
    rows: Any, *, status: str, job: AgentJob | None = None, job_id: Any = None, **fields: Any
) -> bool:
    """End one job: move `rows` (a conditional filter on it) to the terminal `status` with `fields`, and
    queue its terminal effects, in one transaction. Returns whether the condition held (the job ended).

    Every path that ends a job goes through here (or `_job_finish`, whose UPDATE carries the result):
    a failed or cancelled attempt, a job out of attempts, a queued job cancelled.
    """
    with transaction.atomic():
        changed = rows.update(status=status, finished_at=timezone.now(), **fields)
        if changed:
            _terminal_effects(job_id=job.id if job is not None else job_id, status=status, job=job)
    return bool(changed)


def _max_attempts_error(attempts: int) -> dict[str, str]:
    return {"code": "max_attempts", "message": f"The job was attempted {attempts} times."}


def job_release(*, job_id: uuid.UUID | str, attempt: int) -> bool:
    """Give a running attempt back to the queue after an infrastructure error (e.g. the database dropped)."""
    return bool(
        AgentJob.objects.filter(id=job_id, status=JobStatus.RUNNING, attempts=attempt).update(
            status=JobStatus.QUEUED
        )
    )


# --- cancel, sweep ----------------------------------------------------------------------------------


def job_cancel(*, job: AgentJob) -> AgentJob:
    """Cancel a job: queued → cancelled at once; running → cancelled at the next step boundary.

    Raises `Conflict` (409) when the job already ended.
    """
    queued = AgentJob.objects.filter(id=job.id, status=JobStatus.QUEUED)
    if _job_end(queued, job_id=job.id, status=JobStatus.CANCELLED, cancel_requested=True):
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
    queued = AgentJob.objects.filter(status=JobStatus.QUEUED).filter(
        Q(enqueued_at__isnull=True, created_at__lt=now - timedelta(seconds=2))
        | Q(enqueued_at__lt=stale_queue, batch__isnull=True)
        | Q(enqueued_at__lt=stale_batch_queue, batch__isnull=False)
    )
    for job in queued.only("id", "batch_id")[:1000]:
        if job_enqueue(job=job):
            counts["enqueued"] += 1
    running = AgentJob.objects.filter(status=JobStatus.RUNNING).only(
        "id", "timeout_sec", "heartbeat_at", "attempts", "batch_id"
    )
    for job in running[:1000]:
        if job.heartbeat_at and job.heartbeat_at >= _stale_before(job.timeout_sec):
            continue
        if job.attempts >= settings.AGENT_MAX_ATTEMPTS:
            rows = AgentJob.objects.filter(id=job.id, status=JobStatus.RUNNING, attempts=job.attempts)
            error = _max_attempts_error(job.attempts)
            counts["failed"] += _job_end(rows, job_id=job.id, status=JobStatus.FAILED, error=error)
        elif job_release(job_id=job.id, attempt=job.attempts):
            counts["recovered"] += 1
            job_enqueue(job=job)
    return counts


# --- synchronous run (POST /api/agent/) ---------------------------------------------------------------


def agent_run_sync(
    *, query: str, options: AgentOptions, byo_api_key: str | None
) -> tuple[AgentResult, CostDecision]:
    """Run the pipeline within the request, bounded by the same job timeout. Stores nothing."""
    decision = cost_decision_resolve(byo_api_key=byo_api_key)
    llm = build_llm_runnable(
        byo_api_key=byo_api_key if decision.key_source == "user" else None, settings=settings.LLM
    )
    deadline = time.monotonic() + settings.AGENT_JOB_TIMEOUT_SEC
    result = pipeline.run(query, options, llm, get_retriever(), deadline, exact_search=exact_search)
    return result, decision
