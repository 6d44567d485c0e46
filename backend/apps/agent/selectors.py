"""Selectors: read-only queries for jobs and batches, always scoped to their owner."""

from __future__ import annotations

import uuid

from apps.agent.errors import NotFound
from apps.agent.models import AgentJob, JobStatus


def job_get(*, user, job_id: uuid.UUID) -> AgentJob:
    """The user's job, or `NotFound` (also for another user's job: no existence oracle)."""
    job = AgentJob.objects.filter(id=job_id, owner=user).first()
    if job is None:
        raise NotFound("No such job.")
    return job


def job_list(*, user, status: str | None = None):
    qs = AgentJob.objects.filter(owner=user).order_by("-created_at", "id")
    if status:
        if status not in JobStatus.values:
            from apps.agent.errors import ValidationFailed

            raise ValidationFailed(f"Unknown status {status!r}.", details={"status": JobStatus.values})
        qs = qs.filter(status=status)
    return qs


def job_trace(*, job: AgentJob) -> list[dict]:
    """The trace of the job's last attempt, ordered."""
    steps = job.trace_steps.filter(attempt=job.attempts).order_by("position")
    return [
        {
            "name": s.name,
            "attempt": s.attempt,
            "started_at": s.started_at,
            "duration_ms": s.duration_ms,
            "inputs": s.inputs,
            "outputs": s.outputs,
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "cost_usd": s.cost_usd,
            "error": s.error,
        }
        for s in steps
    ]
