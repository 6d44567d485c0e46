"""Running a job: claim an attempt, run the pipeline, store the outcome and its trace, end the job.

The job row is the truth. Work is claimed with conditional updates so that a redelivered Celery
message, the periodic sweep and a second worker can never run one attempt twice; every path that ends
a job goes through `job_end` (or `_job_finish`, whose UPDATE carries the result), in one transaction
with its terminal effects (webhook event, batch completion, forgetting the BYO key).

`runtime` is what a run is wired to (the retriever, the degraded search, the store identity and the
LLM runnable of a job): tests replace it as a whole (`JobRuntime(...)`) instead of patching functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Least
from django.utils import timezone

from agent import pipeline
from agent.cost_policy import CostDecision
from agent.errors import Cancelled, ImproperlyConfigured
from agent.llm_factory import build_llm_runnable, stream_llm
from agent.types import AgentOptions, AgentResult
from apps.agent.models import AgentJob, JobStatus, TraceStep
from apps.agent.services import budgets, fairness, job_events, key_vault, retrieval, spend, worker_liveness
from apps.agent.services.events import job_terminal_event
from apps.agent.services.rate_limit import provider_limiter

logger = logging.getLogger(__name__)

#: A running job asks its row whether it was cancelled at most this often (at step boundaries).
CANCEL_CHECK_INTERVAL_SEC = 0.2


def runnable_for(job: AgentJob, byo_key: str | None):
    """Rebuild the runnable from the decision recorded at submission (reused on every retry): the provider,
    model and key source the job was accepted with (and its budget admitted), whatever this worker's
    settings would decide today. Raises `ImproperlyConfigured` when the recorded key is not here."""
    decision = CostDecision(
        mode=job.cost_mode, key_source=job.key_source, provider=job.provider, model=job.model
    )
    return build_llm_runnable(
        byo_api_key=byo_key, settings=settings.LLM, decision=decision, limiter=provider_limiter()
    )


@dataclasses.dataclass(frozen=True)
class JobRuntime:
    """What a job run is wired to; the defaults are the process's own."""

    retriever: Callable[[], Any] = retrieval.get_retriever
    exact_search: Callable[..., Any] = retrieval.exact_search
    store_identity: Callable[[], dict[str, Any]] = retrieval.store_identity
    llm_for: Callable[[AgentJob, str | None], Any] = runnable_for


runtime = JobRuntime()


def stale_before(job_timeout: float) -> Any:
    return timezone.now() - timedelta(seconds=job_timeout + settings.AGENT_RUNNING_GRACE_SEC)


def attempts_lost(jobs: Sequence[AgentJob]) -> list[AgentJob]:
    """Of these running jobs, those whose attempt is presumed lost, to be taken over or failed.

    An attempt is lost once its deadline plus AGENT_RUNNING_GRACE_SEC has passed with no end AND the worker
    process that claimed it is gone (`worker_liveness`); while that process lives, only once
    AGENT_RUNNING_HUNG_SEC more has passed (a hung thread). Needs `heartbeat_at`, `timeout_sec` and
    `claimed_by` loaded.
    """
    stale = [
        job for job in jobs if job.heartbeat_at is None or job.heartbeat_at < stale_before(job.timeout_sec)
    ]
    alive = worker_liveness.alive_names(job.claimed_by for job in stale)
    hung = timedelta(seconds=settings.AGENT_RUNNING_HUNG_SEC)
    return [
        job
        for job in stale
        if job.claimed_by not in alive
        or job.heartbeat_at is None
        or job.heartbeat_at < stale_before(job.timeout_sec) - hung
    ]


def job_claim(*, job_id: uuid.UUID | str) -> AgentJob | None:
    """Move a job to `running` for a new attempt, or return None if it is not ours to run.

    Claims a queued job, or a running one whose attempt outlived its deadline plus a grace period
    (its worker vanished). A job that has used `AGENT_MAX_ATTEMPTS` is failed with `max_attempts`.
    """
    now = timezone.now()
    # The common case first, in one conditional UPDATE: a queued job with attempts left. Only when it
    # changes nothing is the row read to tell a stale attempt, an exhausted job and a lost race apart.
    claim = {
        "status": JobStatus.RUNNING,
        "attempts": F("attempts") + 1,
        "heartbeat_at": now,
        "started_at": now,
        "claimed_by": worker_liveness.process_name(),
    }
    claimed = AgentJob.objects.filter(
        id=job_id, status=JobStatus.QUEUED, attempts__lt=settings.AGENT_MAX_ATTEMPTS + FREE_ATTEMPTS
    ).update(**claim)
    if claimed:
        return _claimed_read(job_id, now)
    job = (
        AgentJob.objects.filter(id=job_id)
        .only("id", "status", "attempts", "attempts_handed_back", "timeout_sec", "heartbeat_at", "claimed_by")
        .first()
    )
    if job is None or job.is_terminal:
        return None
    if job.status == JobStatus.RUNNING and not attempts_lost([job]):
        return None  # its attempt is alive, or not yet past its deadline and grace: a duplicate delivery
    claimable = Q(status=JobStatus.QUEUED) | Q(
        status=JobStatus.RUNNING, heartbeat_at__lt=stale_before(job.timeout_sec)
    )
    base = AgentJob.objects.filter(claimable, id=job_id, attempts=job.attempts)
    if attempts_used_up(job):
        if job_end(base, job_id=job.id, status=JobStatus.FAILED, error=max_attempts_error(job.attempts)):
            logger.warning("job %s: failed after %d attempts (max_attempts)", job_id, job.attempts)
        return None
    changed = base.update(**claim)
    if not changed:
        return None
    claimed_job = _claimed_read(job_id, now)
    if job.status == JobStatus.RUNNING:
        logger.warning(
            "job %s: attempt %d presumed lost (no end by its deadline + AGENT_RUNNING_GRACE_SEC, its worker"
            " gone or hung); attempt %d takes over",
            job_id,
            job.attempts,
            job.attempts + 1,
        )
    return claimed_job


def _claimed_read(job_id: uuid.UUID | str, started_at: Any) -> AgentJob:
    """Read the row just claimed; if the database fails there, undo the claim (its `started_at` is the
    claim's own stamp) so that the attempt does not look alive while nobody runs it, then raise."""
    try:
        return AgentJob.objects.select_related(fairness.OWNER_CAPS).get(id=job_id)
    except (OperationalError, InterfaceError):
        logger.warning("job %s: its claim could not be read; undone", job_id)
        with contextlib.suppress(OperationalError, InterfaceError):
            AgentJob.objects.filter(id=job_id, status=JobStatus.RUNNING, started_at=started_at).update(
                status=JobStatus.QUEUED
            )
        raise


class AttemptDatabaseError(Exception):
    """The database failed during an attempt that this call had claimed: `attempt` is the one to hand
    back (`job_release`). A database error raised as is came before the claim: nothing to hand back (the
    job's current attempt, if any, belongs to someone else)."""

    def __init__(self, attempt: int):
        super().__init__(f"database error during attempt {attempt}")
        self.attempt = attempt


def job_run(*, job_id: uuid.UUID | str) -> str | None:
    """Claim and run one attempt of a job, storing result and trace in one transaction.

    Returns the job's final status, or None when the job was not claimed (already running elsewhere,
    terminal, or cancelled). Never raises for agent failures: they are stored on the job. A database
    error after the claim is raised as `AttemptDatabaseError` (from the original error).
    """
    job = job_claim(job_id=job_id)
    if job is None:
        return None
    try:
        return _attempt_run(job)
    except (OperationalError, InterfaceError) as exc:
        raise AttemptDatabaseError(job.attempts) from exc
    except BaseException as exc:
        logger.warning("job %s: attempt %d raised %s; handed back", job.id, job.attempts, type(exc).__name__)
        # A bug, or the worker stopping the thread: hand the attempt back rather than leave it running under
        # a live worker, where nobody would take it over for AGENT_RUNNING_HUNG_SEC. `enqueued_at` cleared:
        # the sweep's next run publishes it again. It still counts towards AGENT_MAX_ATTEMPTS.
        with contextlib.suppress(Exception):
            attempt_rows(job.id, job.attempts).update(status=JobStatus.QUEUED, enqueued_at=None)
        raise


def _attempt_run(job: AgentJob) -> str | None:
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
    try:
        runnable = runtime.llm_for(job, byo_key)
    except ImproperlyConfigured as exc:  # e.g. a server-paid job on a worker without LLM_API_KEY
        logger.error("job %s: its LLM cannot be built on this worker: %s", job.id, exc)
        return _job_finish_failed(job, attempt, {"code": "llm_unavailable", "message": str(exc)})
    pooled = bool(connection.settings_dict["OPTIONS"].get("pool"))
    llm = JobLLM(
        budgets.budget_guard(runnable, owner_id=job.owner_id, decision=job), release_connection=pooled
    )
    options = AgentOptions.from_dict(job.options)
    if pooled:
        # Retrieval needs no database (exact search, the cancel check and the finish take one again):
        # under a burst, a hundred threads embedding their queries while holding the pool's ten
        # connections made the others wait past DB_POOL_TIMEOUT_SEC (docs/reliability.md).
        release_pooled_connection()

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
            if pooled:  # a stream lasts seconds: between two checks its thread holds no pooled connection
                release_pooled_connection()
        return checked["cancelled"]

    try:
        result = pipeline.run(
            job.query,
            options,
            llm,
            runtime.retriever(),
            deadline,
            exact_search=runtime.exact_search,
            is_cancelled=is_cancelled,
            on_event=events,
            stream_answer=job.batch_id is None,  # a batch job's answer is one plain call
        )
    except Cancelled as cancel:
        events.flush()
        return _job_finish_cancelled(job, attempt, llm_result=cancel.llm_result)
    events.flush()
    return _job_finish(job, attempt, result)


class JobLLM:
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
        if self._release_connection:
            release_pooled_connection()


def release_pooled_connection() -> None:
    """Hand this thread's database connection back to the pool; the next query takes one again.
    Not inside a transaction (eager tasks run in the caller's)."""
    if not connection.in_atomic_block:
        connection.close()


def terminal_effects(*, job_id: uuid.UUID, status: str, job: AgentJob | None = None) -> None:
    """Inside the terminal transaction: queue the webhook event; after commit, write the final live event
    (which wakes the clients waiting on the job) and forget the BYO key.

    Given the claimed `job` (its webhook URL, batch and key source never change), the effects that cannot
    apply are skipped: no event lookup without a webhook or a batch, no Redis call without a BYO key.
    """
    if job is None or job.webhook_url or job.batch_id:
        job_terminal_event(job_id=job_id)
    if job is None or job.key_source == "user":
        transaction.on_commit(lambda: key_vault.key_delete(job_id=job_id))
    transaction.on_commit(lambda: job_events.job_ended(job_id=job_id, status=status))
    fairness.slot_freed(job_id=job_id, job=job)  # under a per-user cap: the owner's next job goes


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
        "cost_usd": spend.usd_amount(result.cost_usd),
        "latency_ms": (now - job.started_at).total_seconds() * 1000,
        "vector_store": runtime.store_identity(),
    }
    trace = [
        TraceStep.from_step(step, job_id=job.id, attempt=attempt, position=position)
        for position, step in enumerate(result.trace)
    ]
    with transaction.atomic():
        # Conditional: only the attempt that still owns the row, and only if no cancel arrived meanwhile.
        if attempt_rows(job.id, attempt).filter(cancel_requested=False).update(**finish):
            TraceStep.objects.bulk_create(trace)
            terminal_effects(job_id=job.id, status=status, job=job)
            return status
    # Nothing changed. A cancel arrived while the job ran (its answer is discarded), or another attempt
    # took over (we were presumed dead): only the first ends the job, as cancelled.
    # The call was made (and paid) all the same: its cost stays on the row, where budgets are rebuilt from.
    cancelled = attempt_rows(job.id, attempt).filter(cancel_requested=True)
    spent = {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cost_usd": spend.usd_amount(result.cost_usd),
    }
    ended = job_end(cancelled, job=job, status=JobStatus.CANCELLED, **spent)
    if ended:
        return JobStatus.CANCELLED
    logger.warning(
        "job %s: attempt %d ended after %.1f s, but the job was no longer its own (presumed lost and taken"
        " over, or ended elsewhere); its result is dropped",
        job.id,
        attempt,
        (timezone.now() - job.started_at).total_seconds(),
    )
    return None


def _job_finish_failed(job: AgentJob, attempt: int, error: dict[str, Any]) -> str | None:
    failed = job_end(attempt_rows(job.id, attempt), job=job, status=JobStatus.FAILED, error=error)
    return JobStatus.FAILED if failed else None


def _job_finish_cancelled(job: AgentJob, attempt: int, *, llm_result: dict | None = None) -> str | None:
    """End the attempt as cancelled; `llm_result` is what a call stopped mid-answer had cost (the stream's
    text so far was paid): kept on the row, where budgets are rebuilt from."""
    spent: dict[str, Any] = {}
    if llm_result is not None:
        spent = {
            "prompt_tokens": int(llm_result.get("prompt_tokens") or 0),
            "completion_tokens": int(llm_result.get("completion_tokens") or 0),
            "usage_estimated": bool(llm_result.get("usage_estimated")),
            "cost_usd": spend.usd_amount(float(llm_result.get("cost_usd") or 0.0)),
        }
    cancelled = job_end(attempt_rows(job.id, attempt), job=job, status=JobStatus.CANCELLED, **spent)
    return JobStatus.CANCELLED if cancelled else None


def attempt_rows(job_id: Any, attempt: int) -> Any:
    """The job's row while `attempt` is the one running it (an update through it is conditional): what
    every end or release of an attempt updates, whoever does it (its worker, the sweep)."""
    return AgentJob.objects.filter(id=job_id, status=JobStatus.RUNNING, attempts=attempt)


def job_end(
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
            terminal_effects(job_id=job.id if job is not None else job_id, status=status, job=job)
    return bool(changed)


#: The attempts a job may hand back after a database error (`job_release(handed_back=True)`) without using
#: up AGENT_MAX_ATTEMPTS: that cap stops a job that kills its worker, not one that met a busy pool. Bounded,
#: so that a job that always meets a database error still ends.
FREE_ATTEMPTS_MAX = 10
#: In SQL, on the row: the attempts a job may have reached and still be claimed.
FREE_ATTEMPTS = Least(F("attempts_handed_back"), Value(FREE_ATTEMPTS_MAX))


def attempts_used_up(job: AgentJob) -> bool:
    """Whether `job` has used AGENT_MAX_ATTEMPTS (attempts handed back after a database error are free)."""
    return job.attempts - min(job.attempts_handed_back, FREE_ATTEMPTS_MAX) >= settings.AGENT_MAX_ATTEMPTS


def max_attempts_error(attempts: int) -> dict[str, str]:
    return {"code": "max_attempts", "message": f"The job was attempted {attempts} times."}


def job_release(*, job_id: uuid.UUID | str, attempt: int, handed_back: bool = False) -> bool:
    """Give a running attempt back to the queue: presumed lost (the sweep), or `handed_back` by its own
    worker after a database error (then it does not count towards AGENT_MAX_ATTEMPTS)."""
    changes: dict[str, Any] = {"status": JobStatus.QUEUED}
    if handed_back:
        changes["attempts_handed_back"] = F("attempts_handed_back") + 1
    return bool(attempt_rows(job_id, attempt).update(**changes))
