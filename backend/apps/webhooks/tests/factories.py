"""Factories for the webhooks tests: terminal jobs and batches with a webhook URL."""

from __future__ import annotations

from django.utils import timezone

from apps.agent.models import AgentJob, Batch, JobStatus

RESULT = {
    "message": "Try Moby-Dick.",
    "results": [{"id": "1", "title": "Moby-Dick"}],
    "actions": [{"type": "open", "id": "1"}],
    "trace": [{"step": "retrieve", "big": "x" * 1000}],
}


def job_make(
    owner,
    *,
    status: str = JobStatus.SUCCEEDED,
    webhook_url: str = "",
    batch: Batch | None = None,
    result: dict | None = None,
    error: dict | None = None,
) -> AgentJob:
    terminal = status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
    return AgentJob.objects.create(
        owner=owner,
        query="a book about the sea",
        timeout_sec=10.0,
        cost_mode="paid",
        key_source="service",
        provider="stub",
        model="stub",
        status=status,
        result=(result if result is not None else RESULT) if status == JobStatus.SUCCEEDED else None,
        error=error
        if error is not None
        else ({"code": "llm_error", "message": "boom"} if status == JobStatus.FAILED else None),
        finished_at=timezone.now() if terminal else None,
        webhook_url=webhook_url,
        batch=batch,
    )


def batch_make(owner, *, webhook_url: str = "") -> Batch:
    return Batch.objects.create(
        owner=owner, source="queries", webhook_url=webhook_url, completed_at=timezone.now()
    )
