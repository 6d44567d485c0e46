"""The JSON bodies of the agent's webhook events: a job that ended, a batch that completed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Count

from apps.agent.models import AgentJob, Batch, JobStatus
from core.timestamps import iso_z

# Links are paths: the service does not know the public host name it is reached by.
JOB_LINK = "/api/agent/jobs/{id}"
BATCH_LINK = "/api/agent/batches/{id}"


def job_event_payload(*, job: AgentJob, event_type: str, now: datetime) -> dict[str, Any]:
    result = job.result or {}
    return {
        "type": event_type,
        "timestamp": iso_z(job.finished_at or now),
        "data": {
            "job_id": str(job.id),
            "status": job.status,
            "degraded": job.degraded,
            "message": result.get("message"),
            "results": result.get("results", []),
            "actions": result.get("actions", []),
            "error": job.error,
            "batch_id": str(job.batch_id) if job.batch_id else None,
            "created_at": iso_z(job.created_at),
            "finished_at": iso_z(job.finished_at),
            # The trace stays out of the body (it can be large); it is one GET away.
            "links": {"job": JOB_LINK.format(id=job.id)},
        },
    }


def batch_event_payload(*, batch: Batch, event_type: str, now: datetime) -> dict[str, Any]:
    counts = dict(batch.jobs.order_by().values_list("status").annotate(n=Count("id")))
    by_status = {status: counts.get(status, 0) for status in JobStatus.values}
    return {
        "type": event_type,
        "timestamp": iso_z(batch.completed_at or now),
        "data": {
            "batch_id": str(batch.id),
            "status": "cancelled" if batch.cancelled_at else "completed",
            "jobs": {"total": sum(by_status.values()), **by_status},
            "created_at": iso_z(batch.created_at),
            "completed_at": iso_z(batch.completed_at),
            "links": {"batch": BATCH_LINK.format(id=batch.id)},
        },
    }
