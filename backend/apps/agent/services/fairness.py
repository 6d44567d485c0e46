"""Fair share: at most `AGENT_MAX_RUNNING_PER_USER` jobs of one user run at a time across every worker, and
at most `AGENT_MAX_RUNNING_PER_USER_BATCH` of their batch jobs (counted apart). Empty means unlimited.

A task that cannot get a slot must neither hold a worker slot nor spin, so a job over its owner's cap is
never published: it stays `queued` in the database with `enqueued_at` empty, in its owner's first-in
first-out line (`created_at`, then `id`). Publishing a job is *admitting* it: its `enqueued_at` is set and
it counts against the cap until it ends (queued and published, or running). The Celery queues therefore
hold at most a cap's worth of any user's jobs, and another user's job is never behind more than that.

An operator overrides a user's caps in the admin (`UserFairShare`): the caps used at admission are always
the owner's (`user_caps`), read from the database each time, so a change applies to their next admission.

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

from apps.agent.models import AgentJob, JobStatus, UserFairShare
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


#: An uncapped owner's waiting jobs (a publish that failed, or a cap lifted while they waited) are admitted
#: at most this many at a time (the sweep's bound).
UNCAPPED_ADMIT_MAX = 1000


#: What to load with a job (`select_related`) so that its end knows its owner's caps without a query.
OWNER_CAPS = "owner__agent_fair_share"

_CAP_FIELDS = {False: "max_running", True: "max_running_batch"}


def _caps(override: UserFairShare | None) -> dict[str, int | None]:
    caps = {
        "max_running": settings.AGENT_MAX_RUNNING_PER_USER,
        "max_running_batch": settings.AGENT_MAX_RUNNING_PER_USER_BATCH,
    }
    if override is not None:
        if override.unlimited:
            return {"max_running": None, "max_running_batch": None}
        caps.update({name: getattr(override, name) for name in caps if getattr(override, name) is not None})
    return caps


def user_caps(*, owner_id: Any) -> dict[str, int | None]:
    """The fair-share caps of `owner_id`: `max_running` and `max_running_batch`, None meaning unlimited.

    Their `UserFairShare` override where it sets one (`unlimited` lifts both), else the settings
    AGENT_MAX_RUNNING_PER_USER and AGENT_MAX_RUNNING_PER_USER_BATCH. One indexed read.
    """
    return _caps(UserFairShare.objects.filter(user_id=owner_id).first())


def user_cap(*, owner_id: Any, batch: bool) -> int | None:
    """The most jobs of `owner_id` (of this kind) that may be admitted at once; None: unlimited."""
    return user_caps(owner_id=owner_id)[_CAP_FIELDS[batch]]


def _job_cap(job: AgentJob) -> int | None:
    """The cap of `job`'s owner for its kind: from the override loaded with it (`OWNER_CAPS`: job_claim
    does), else read."""
    owner_cached = AgentJob.owner.is_cached(job)
    if owner_cached and type(job.owner).agent_fair_share.is_cached(job.owner):
        override = getattr(job.owner, "agent_fair_share", None)  # None: the user has no override
        return _caps(override)[_CAP_FIELDS[job.batch_id is not None]]
    return user_cap(owner_id=job.owner_id, batch=job.batch_id is not None)


def kind_capped(*, batch: bool) -> bool:
    """Whether any user may have jobs of this kind waiting for admission: the kind's setting is set, or an
    override sets a cap for it. The sweep then admits that kind's unpublished jobs instead of publishing
    them blindly."""
    if (
        settings.AGENT_MAX_RUNNING_PER_USER_BATCH if batch else settings.AGENT_MAX_RUNNING_PER_USER
    ) is not None:
        return True
    field = _CAP_FIELDS[batch]
    return UserFairShare.objects.filter(**{f"{field}__isnull": False}, unlimited=False).exists()


def _kind(batch: bool) -> Q:
    return Q(batch__isnull=not batch)


def jobs_admit(*, owner_id: Any, batch: bool) -> list[uuid.UUID]:
    """Admit the oldest waiting jobs of `owner_id` (batch or interactive) that fit under their cap: mark them
    published (`enqueued_at`) and return their ids, oldest first, for the caller to publish.

    Returns [] when nothing waits or no slot is free. An uncapped owner has no line: whatever waits (a
    publish that failed, a cap lifted meanwhile) is admitted, up to UNCAPPED_ADMIT_MAX. Raises
    `AdmissionBusy` when the lock cannot be taken.
    """
    with _admission_lock(owner_id, batch):
        # Read under the lock, so that an admission never mixes an old cap with a new count.
        cap = user_cap(owner_id=owner_id, batch=batch)
        mine = AgentJob.objects.filter(_kind(batch), owner_id=owner_id)
        if cap is None:
            free = UNCAPPED_ADMIT_MAX
        else:
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
    same kind, if their cap for that kind is set. Given the claimed `job` (loaded with its owner's
    override), this costs no query."""
    if job is None:
        job = (
            AgentJob.objects.select_related(OWNER_CAPS)
            .only(
                "owner_id",
                "batch_id",
                *(f"{OWNER_CAPS}__{field}" for field in (*_CAP_FIELDS.values(), "unlimited")),
            )
            .filter(id=job_id)
            .first()
        )
        if job is None:
            return
    if _job_cap(job) is not None:
        owner_id, batch = job.owner_id, job.batch_id is not None
        transaction.on_commit(lambda: admit_and_publish(owner_id=owner_id, batch=batch))


def _task_publish(job_id: uuid.UUID, *, batch: bool) -> bool:
    try:
        publish.task_publish(publish.BATCH_JOB_RUN if batch else publish.JOB_RUN, args=[str(job_id)])
    except Exception as exc:  # broker down: the sweep admits the job again
        logger.warning("could not enqueue job %s (%s); the sweep will retry", job_id, type(exc).__name__)
        return False
    return True
