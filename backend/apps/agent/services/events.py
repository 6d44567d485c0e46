"""What happens when a job reaches a terminal state: its webhook event and its batch's progress.

Called inside the transaction that made the job terminal, so that the event exists exactly when the
outcome does (a rolled-back outcome leaves no event; a redelivered task finds the job terminal).
"""

from __future__ import annotations

import uuid

from django.db import transaction
from django.utils import timezone

from apps.agent.models import TERMINAL_STATUSES, AgentJob, Batch
from apps.webhooks.models import EVENT_TYPE_BY_JOB_STATUS, EventType
from apps.webhooks.services import event_enqueue


def job_terminal_event(*, job_id: uuid.UUID) -> None:
    """Queue the job's webhook event (if it has a URL) and complete its batch (if it was the last job)."""
    job = AgentJob.objects.get(id=job_id)
    if job.webhook_url:
        event_enqueue(event_type=EVENT_TYPE_BY_JOB_STATUS[job.status], job=job)
    if job.batch_id:
        batch_completion_check(batch_id=job.batch_id)


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
        if batch.webhook_url:
            event_enqueue(event_type=EventType.BATCH_COMPLETED, batch=batch)
    return True
