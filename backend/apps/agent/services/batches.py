"""Services that write batches. Completion is detected when a batch's last job ends."""

from __future__ import annotations

import uuid

from django.db import transaction
from django.utils import timezone

from apps.agent.models import TERMINAL_STATUSES, AgentJob, Batch


def batch_completion_check(*, batch_id: uuid.UUID) -> bool:
    """Mark the batch complete (once) when none of its jobs is left to run; queue its webhook event.

    Returns True when this call completed the batch.
    """
    if AgentJob.objects.filter(batch_id=batch_id).exclude(status__in=TERMINAL_STATUSES).exists():
        return False
    with transaction.atomic():
        changed = Batch.objects.filter(id=batch_id, completed_at__isnull=True).update(
            completed_at=timezone.now()
        )
        if changed:
            batch = Batch.objects.get(id=batch_id)
            if batch.webhook_url:
                from apps.webhooks.services import event_enqueue

                event_enqueue(event_type="agent.batch.completed", batch=batch)
    return bool(changed)
