"""Fair share: at most `AGENT_MAX_RUNNING_PER_USER` jobs of one user run at a time across every worker, and
at most `AGENT_MAX_RUNNING_PER_USER_BATCH` of their batch jobs (counted apart). Empty means unlimited.

A task that cannot get a slot must neither hold a worker slot nor spin, so a job over its owner's cap is
never published: it stays `queued` in the database with `enqueued_at` empty, in its owner's first-in
first-out line (`created_at`, then `id`). Publishing a job is *admitting* it: its `enqueued_at` is set and
it counts against the cap until it ends (queued and published, or running). The Celery queues therefore
hold at most a cap's worth of any user's jobs, and another user's job is never behind more than that.

Admission of one (user, kind) runs under a short lock in the shared Redis, so two processes never fill
the same free slot twice; the job rows are the count. It runs when a job is created, when a job of that
user and kind ends (after the commit that ended it), and from the periodic sweep for every user with
waiting jobs (a safety net: a finish hook lost with its process, a broker or Redis outage).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.agent.models import AgentJob, JobStatus
from apps.agent.services.shared_cache import redis_client
from apps.core import publish

logger = logging.getLogger(__name__)

#: The admission lock outlives a crashed holder by this much at most; admission takes milliseconds.
LOCK_TIMEOUT_SEC = 10
#: How long an admission waits for another process's admission of the same user to finish.
LOCK_WAIT_SEC = 5

_local_lock = threading.Lock()


class AdmissionBusy(Exception):
    """The admission lock could not be taken (Redis down, or held too long): the sweep admits later."""


def user_cap(*, batch: bool) -> int | None:
    """The most jobs of one user (of this kind) that may be admitted at once; None: unlimited."""
    return settings.AGENT_MAX_RUNNING_PER_USER_BATCH if batch else settings.AGENT_MAX_RUNNING_PER_USER


def _kind(batch: bool) -> Q:
    return Q(batch__isnull=not batch)


def jobs_admit(*, owner_id: Any, batch: bool) -> list[uuid.UUID]:
    """Admit the oldest waiting jobs of `owner_id` (batch or interactive) that fit under the cap: mark them
    published (`enqueued_at`) and return their ids, oldest first, for the caller to publish.

    Returns [] when the kind is uncapped (its jobs are published at creation), nothing waits, or no slot is
    free. Raises `AdmissionBusy` when the lock cannot be taken.
    """
    cap = user_cap(batch=batch)
    if cap is None:
        return []
    with _admission_lock(owner_id, batch):
        mine = AgentJob.objects.filter(_kind(batch), owner_id=owner_id)
        active = mine.filter(
            Q(status=JobStatus.RUNNING) | Q(status=JobStatus.QUEUED, enqueued_at__isnull=False)
        ).count()
        free = cap - active
        if free <= 0:
            return []
        waiting = mine.filter(status=JobStatus.QUEUED, enqueued_at__isnull=True).order_by("created_at", "id")
        ids = list(waiting.values_list("id", flat=True)[:free])
        if ids:
            AgentJob.objects.filter(id__in=ids, status=JobStatus.QUEUED, enqueued_at__isnull=True).update(
                enqueued_at=timezone.now()
            )
    return ids


def waiting_owners(*, batch: bool, created_before: Any, limit: int = 1000) -> list[Any]:
    """Owners with jobs of this kind waiting for admission (created before `created_before`): the sweep's
    work list."""
    rows = (
        AgentJob.objects.filter(
            _kind(batch), status=JobStatus.QUEUED, enqueued_at__isnull=True, created_at__lt=created_before
        )
        .values_list("owner_id", flat=True)
        .distinct()
        .order_by()
    )
    return list(rows[:limit])


@contextlib.contextmanager
def _admission_lock(owner_id: Any, batch: bool) -> Iterator[None]:
    client = redis_client()
    if client is None:  # no shared Redis (unit tests' local-memory cache): one process, one lock
        with _local_lock:
            yield
        return
    name = f"agent:fair-share:{owner_id}:{'batch' if batch else 'interactive'}"
    try:
        lock = client.lock(name, timeout=LOCK_TIMEOUT_SEC, blocking_timeout=LOCK_WAIT_SEC)
        acquired = lock.acquire()
    except Exception as exc:  # Redis down: the jobs stay queued, the sweep admits them later
        raise AdmissionBusy(type(exc).__name__) from None
    if not acquired:
        raise AdmissionBusy("lock held")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # expired (a stall over LOCK_TIMEOUT_SEC) or Redis gone
            lock.release()


def admit_and_publish(*, owner_id: Any, batch: bool) -> int:
    """Publish the oldest waiting jobs of `owner_id` that fit under the per-user cap.

    Returns how many were published. A job whose publish fails goes back to waiting (its mark is cleared)
    and the sweep admits it again; so does everything when the admission lock is unavailable.
    """
    try:
        admitted = jobs_admit(owner_id=owner_id, batch=batch)
    except AdmissionBusy as exc:
        logger.warning("could not admit jobs of user %s (%s); the sweep will retry", owner_id, exc)
        return 0
    published = 0
    for job_id in admitted:
        if _task_publish(job_id, batch=batch):
            published += 1
        else:
            AgentJob.objects.filter(id=job_id, status=JobStatus.QUEUED).update(enqueued_at=None)
    return published


def slot_freed(*, job_id: uuid.UUID, job: AgentJob | None) -> None:
    """Inside the transaction that ends a job: after its commit, admit its owner's next waiting job of the
    same kind, if that kind is capped."""
    if settings.AGENT_MAX_RUNNING_PER_USER is None and settings.AGENT_MAX_RUNNING_PER_USER_BATCH is None:
        return
    if job is not None:
        owner_id, batch = job.owner_id, job.batch_id is not None
    else:
        row = AgentJob.objects.filter(id=job_id).values_list("owner_id", "batch_id").first()
        if row is None:
            return
        owner_id, batch = row[0], row[1] is not None
    if user_cap(batch=batch) is not None:
        transaction.on_commit(lambda: admit_and_publish(owner_id=owner_id, batch=batch))


def _task_publish(job_id: uuid.UUID, *, batch: bool) -> bool:
    try:
        publish.task_publish(publish.BATCH_JOB_RUN if batch else publish.JOB_RUN, args=[str(job_id)])
    except Exception as exc:  # broker down: the sweep admits the job again
        logger.warning("could not enqueue job %s (%s); the sweep will retry", job_id, type(exc).__name__)
        return False
    return True
