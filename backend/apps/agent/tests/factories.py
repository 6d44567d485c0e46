"""The one place where tests make jobs and batches (plain functions; every test module imports these).

Two kinds of job: `job_submit` goes through the service (`job_create`, as the API does: queued, not
published), `job_make` writes a row directly in any state (a terminal job by default, with a result).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.utils import timezone

from agent.types import AgentOptions
from apps.agent.models import TERMINAL_STATUSES, AgentJob, Batch, JobStatus
from apps.agent.services import jobs

#: A result as the pipeline stores it (every field of the response contract: the GET serialises it).
BOOK = {
    "id": "1",
    "title": "Moby-Dick",
    "author": "Herman Melville",
    "year": 1851,
    "score": 0.9,
    "why": "a whale hunt at sea",
    "cited": True,
}
RESULT = {
    "message": "Try Moby-Dick.",
    "results": [BOOK],
    "actions": [{"type": "view_book", "label": "Moby-Dick", "book_id": "1"}],
    "trace": [{"step": "retrieve", "big": "x" * 1000}],
}
FAILURE = {"code": "llm_error", "message": "boom"}
#: The columns a row needs when it is written directly (what `job_create` would have resolved).
ROW_DEFAULTS: dict[str, Any] = {
    "query": "a book about the sea",
    "options": {"top_k": 3, "filters": {}},
    "timeout_sec": 10.0,
    "cost_mode": "paid",
    "key_source": "none",
    "provider": "stub",
    "model": "stub",
}


def job_submit(owner, query: str = "whales", *, top_k: int = 2, **fields: Any) -> AgentJob:
    """A job created by the service as the API creates it (queued, not published); then `fields` set."""
    job, _ = jobs.job_create(owner=owner, query=query, options=AgentOptions(top_k=top_k), enqueue=False)
    if fields:
        AgentJob.objects.filter(id=job.id).update(**fields)
        job.refresh_from_db()
    return job


def job_finished(owner, query: str = "whales", *, ids=("1", "2"), options=None, **fields: Any) -> AgentJob:
    """A submitted job that succeeded with known results (`ids`), e.g. the parent of a re-run."""
    job, _ = jobs.job_create(
        owner=owner, query=query, options=options or AgentOptions(top_k=2), enqueue=False
    )
    values = {
        "status": JobStatus.SUCCEEDED,
        "result": {"message": "m", "results": [{"id": i} for i in ids], "actions": []},
        "latency_ms": 100.0,
        "cost_usd": Decimal("0.001"),
        "finished_at": timezone.now(),
        **fields,
    }
    AgentJob.objects.filter(id=job.id).update(**values)
    job.refresh_from_db()
    return job


def job_make(
    owner,
    *,
    status: str = JobStatus.SUCCEEDED,
    webhook_url: str = "",
    batch: Batch | None = None,
    result: dict | None = None,
    error: dict | None = None,
    **fields: Any,
) -> AgentJob:
    """A job row written directly in `status`: a succeeded one carries `RESULT`, a failed one `FAILURE`,
    a terminal one a `finished_at`."""
    return AgentJob.objects.create(
        owner=owner,
        **{**ROW_DEFAULTS, **fields},
        status=status,
        result=(result if result is not None else RESULT) if status == JobStatus.SUCCEEDED else None,
        error=error if error is not None else (FAILURE if status == JobStatus.FAILED else None),
        finished_at=timezone.now() if status in TERMINAL_STATUSES else None,
        webhook_url=webhook_url,
        batch=batch,
    )


def jobs_make(owner, n: int, **fields: Any) -> list[AgentJob]:
    """`n` queued rows in one INSERT, queries q0, q1, ..."""
    return AgentJob.objects.bulk_create(
        AgentJob(owner=owner, **{**ROW_DEFAULTS, "query": f"q{i}", **fields}) for i in range(n)
    )


def batch_make(owner, *, webhook_url: str = "", completed: bool = True, **fields: Any) -> Batch:
    """A batch row (completed by default)."""
    return Batch.objects.create(
        owner=owner,
        source="queries",
        webhook_url=webhook_url,
        completed_at=timezone.now() if completed else None,
        **fields,
    )
