"""What happens when a job reaches a terminal state: its webhook event and its batch's progress.

Called inside the transaction that made the job terminal, so that the event exists exactly when the
outcome does (a rolled-back outcome leaves no event; a redelivered task finds the job terminal). The
webhooks app records and sends events; this module decides which event a job or a batch gets and what
it says (`event_payloads`).
"""

from __future__ import annotations

import uuid

from django.db import transaction
from django.utils import timezone

from apps.agent.models import TERMINAL_STATUSES, AgentJob, Batch
from apps.agent.services import budgets
from apps.agent.services.event_payloads import batch_event_payload, job_event_payload
from apps.webhooks.models import EVENT_TYPE_BY_JOB_STATUS, Delivery, EventType
from apps.webhooks.services import delivery_redeliver, event_enqueue
from core.errors import Conflict


def job_terminal_event(*, job_id: uuid.UUID) -> None:
    """Queue the job's webhook event (if it has a URL) and complete its batch (if it was the last job)."""
    job = AgentJob.objects.get(id=job_id)
    if job.webhook_url:
        job_event_enqueue(job=job)
    if job.batch_id:
        batch_completion_check(batch_id=job.batch_id)


def job_event_enqueue(*, job: AgentJob) -> Delivery | None:
    """Record the event of the terminal `job` (its status says which); None without a webhook_url.

    Raises ValueError for a job that has not ended (a wiring bug: it rolls the caller's transaction back).
    """
    event_type = EVENT_TYPE_BY_JOB_STATUS.get(job.status)
    if event_type is None:
        raise ValueError(f"job {job.id} in status {job.status!r} has no event")
    return event_enqueue(
        event_type=event_type,
        owner_id=job.owner_id,
        url=job.webhook_url,
        payload=job_event_payload(job=job, event_type=event_type, now=timezone.now()),
        job_id=job.id,
    )


def batch_event_enqueue(*, batch: Batch) -> Delivery | None:
    """Record the `agent.batch.completed` event of `batch`; None without a webhook_url."""
    event_type = EventType.BATCH_COMPLETED
    return event_enqueue(
        event_type=event_type,
        owner_id=batch.owner_id,
        url=batch.webhook_url,
        payload=batch_event_payload(batch=batch, event_type=event_type, now=timezone.now()),
        batch_id=batch.id,
    )


def job_event_redeliver(*, job: AgentJob) -> Delivery:
    """Send a terminal job's event again: same event id (`webhook-id`), a new series of attempts.

    Lifts a 410 block on the URL (the owner says the endpoint is back). Records the event when the job
    has none yet. `job` is one its owner selected (`selectors.job_get`). Raises `Conflict` when the job
    is not terminal or has no webhook_url. Returns the delivery, pending, its send enqueued after commit.
    """
    if not job.is_terminal:
        raise Conflict("The job has not finished yet; there is no event to deliver.", code="job_not_terminal")
    if not job.webhook_url:
        raise Conflict("The job has no webhook_url.", code="no_webhook_url")
    with transaction.atomic():
        delivery = delivery_redeliver(job_id=job.id, owner_id=job.owner_id, url=job.webhook_url)
        if delivery is None:
            delivery = job_event_enqueue(job=job)
    assert delivery is not None  # the job has a webhook_url
    return delivery


def batch_completion_check(*, batch_id: uuid.UUID) -> bool:
    """Mark the batch complete (once) when none of its jobs is left to run; queue its webhook event.

    Called inside the transaction that made one of its jobs terminal. Returns True when this call
    completed the batch.
    """
    with transaction.atomic():
        # Lock the batch row so that the last two jobs finishing at once cannot both miss the end: the
        # second one waits for the first to commit, then sees it terminal (PostgreSQL; SQLite
        # serialises writers anyway).
        batch = Batch.objects.select_for_update().filter(id=batch_id, completed_at__isnull=True).first()
        if batch is None:
            return False
        if AgentJob.objects.filter(batch_id=batch_id).exclude(status__in=TERMINAL_STATUSES).exists():
            return False
        batch.completed_at = timezone.now()
        batch.save(update_fields=["completed_at"])
        # What its jobs did not take of the batch's spending hold is free again (services/budgets.py).
        transaction.on_commit(lambda: budgets.batch_hold_release(batch_id=batch_id))
        if batch.webhook_url:
            batch_event_enqueue(batch=batch)
    return True
