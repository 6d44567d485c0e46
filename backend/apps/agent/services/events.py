"""What happens when a job reaches a terminal state: its webhook event and its batch's progress.

Called inside the transaction that made the job terminal, so that the event exists exactly when the
outcome does (a rolled-back outcome leaves no event; a redelivered task finds the job terminal).
"""

from __future__ import annotations

import uuid

from apps.agent.models import AgentJob, JobStatus

EVENT_BY_STATUS = {
    JobStatus.SUCCEEDED: "agent.job.succeeded",
    JobStatus.FAILED: "agent.job.failed",
    JobStatus.CANCELLED: "agent.job.cancelled",
}


def job_terminal_event(*, job_id: uuid.UUID) -> None:
    job = AgentJob.objects.get(id=job_id)
    if job.webhook_url:
        from apps.webhooks.services import event_enqueue

        event_enqueue(event_type=EVENT_BY_STATUS[JobStatus(job.status)], job=job)
    if job.batch_id:
        from apps.agent.services.batches import batch_completion_check

        batch_completion_check(batch_id=job.batch_id)
