"""Celery tasks: thin wrappers that take ids, call one service, and own the retry decision."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from apps.agent.services import job_execution, jobs, retention
from apps.core import publish

logger = logging.getLogger(__name__)


#: Tries to hand an attempt back after a database error; each try takes a fresh connection (a pool may
#: hold several connections that the same outage broke).
RELEASE_TRIES = 3


def _run(task, job_id: str) -> str | None:
    try:
        return job_execution.job_run(job_id=job_id)
    except job_execution.AttemptDatabaseError as exc:
        # The database dropped under our attempt: drop the broken connection, hand it back, try again.
        _log_database_error(job_id, exc.__cause__, f"attempt {exc.attempt} handed back")
        _release_after_database_error(job_id, exc.attempt)
        raise task.retry(countdown=1, max_retries=5) from None
    except (OperationalError, InterfaceError) as exc:
        # Before the claim (e.g. no pooled connection in time): no attempt of ours to hand back.
        _log_database_error(job_id, exc, "before its claim")
        close_old_connections()
        raise task.retry(countdown=1, max_retries=5) from None


def _log_database_error(job_id: str, exc: BaseException | None, where: str) -> None:
    # The first line of the driver's message says which failure (pool timeout, connection refused, ...);
    # it names the server, never a key.
    message = str(exc).strip().splitlines()[0][:200] if exc is not None and str(exc).strip() else ""
    logger.warning(
        "database error while running job %s (%s): %s: %s; retrying",
        job_id,
        where,
        type(exc).__name__,
        message,
    )


def _release_after_database_error(job_id: str, attempt: int) -> bool:
    for _ in range(RELEASE_TRIES):
        close_old_connections()
        connection.close()
        try:
            return job_execution.job_release(job_id=job_id, attempt=attempt, handed_back=True)
        except (OperationalError, InterfaceError):
            continue
    return False  # still down: the sweep recovers the job once the database is back


# ignore_result: the job row is the truth; storing a result in Redis would only cost a round trip.
@shared_task(bind=True, name=publish.JOB_RUN, acks_late=True, max_retries=5, ignore_result=True)
def job_run_task(self, job_id: str) -> str | None:
    """Run one interactive agent job by id."""
    return _run(self, job_id)


@shared_task(bind=True, name=publish.BATCH_JOB_RUN, acks_late=True, max_retries=5, ignore_result=True)
def batch_job_run_task(self, job_id: str) -> str | None:
    """Run one job of a batch by id; routed to the low-priority `batch` queue."""
    return _run(self, job_id)


@shared_task(name=publish.JOBS_SWEEP, ignore_result=True)
def jobs_sweep_task() -> dict[str, int]:
    """Periodic (Celery beat): enqueue forgotten queued jobs, recover or fail abandoned running ones."""
    return jobs.jobs_sweep()


@shared_task(name=publish.JOBS_PURGE, ignore_result=True)
def jobs_purge_task() -> dict[str, object]:
    """Periodic (Celery beat, when AGENT_JOB_RETENTION_DAYS is set): purge jobs past their retention.

    Works for at most half the task's soft time limit and half the beat interval, so runs never overlap
    and never hit the limit; what is left goes at the next run.
    """
    if settings.AGENT_JOB_RETENTION_DAYS is None:
        return {"skipped": "AGENT_JOB_RETENTION_DAYS is empty: jobs are kept for ever"}
    report = retention.jobs_purge(
        older_than=timedelta(days=settings.AGENT_JOB_RETENTION_DAYS),
        chunk_size=settings.AGENT_PURGE_CHUNK_SIZE,
        time_budget_sec=min(settings.CELERY_TASK_SOFT_TIME_LIMIT, settings.AGENT_PURGE_INTERVAL_SEC) / 2,
    )
    logger.info("jobs purge: %s", report.as_dict())
    return report.as_dict()


@shared_task(name=publish.NOOP)
def noop_task() -> str:
    """A task that does nothing: the baseline of the overhead benchmark and a broker round-trip probe."""
    return "ok"
