"""Retention: purge finished jobs older than AGENT_JOB_RETENTION_DAYS, with everything that hangs off them.

A job goes with its trace steps, its webhook deliveries and their attempts (Django's cascade), its live
events (its Redis stream, if it has not expired yet), and its re-runs forget it (`parent` is set to NULL). A batch goes once none of its jobs is left. Deletion runs in
chunks of primary keys, each chunk in its own short transaction, so that no purge holds locks for long
and an interrupted purge has deleted whole jobs only; the next run goes on where it stopped. The queries
are plain ORM (no vendor SQL), the same on SQLite and PostgreSQL.

Jobs that have not finished are never purged, however old: a job always ends (the sweep sees to it), and
is purged afterwards. Nor is a finished job that something under way still needs: a webhook delivery of it
still pending, or a re-run of it in a batch that has not completed; it goes at a later run.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from apps.agent.models import TERMINAL_STATUSES, AgentJob, Batch, TraceStep
from apps.agent.services import job_events
from apps.webhooks.models import Delivery, DeliveryAttempt, DeliveryStatus

#: The report's key for the jobs' event streams (in Redis, not rows).
EVENT_STREAMS = "event_streams"
#: Job ids per EXISTS when a dry run counts event streams.
_COUNT_IDS = 1000
#: What a purge counts, by model: the report's keys.
COUNTED = {
    AgentJob: "jobs",
    TraceStep: "trace_steps",
    Delivery: "deliveries",
    DeliveryAttempt: "delivery_attempts",
    Batch: "batches",
}


@dataclass
class PurgeReport:
    """What a purge deleted (or, for a dry run, would delete), and whether it reached the end."""

    cutoff: datetime
    dry_run: bool
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys((*COUNTED.values(), EVENT_STREAMS), 0)
    )
    chunks: int = 0
    complete: bool = True

    def add(self, deleted: dict[str, int]) -> None:
        labels = {model._meta.label: key for model, key in COUNTED.items()}
        for label, n in deleted.items():
            if label in labels:
                self.counts[labels[label]] += n

    def as_dict(self) -> dict[str, object]:
        return {
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            **self.counts,
            "chunks": self.chunks,
            "complete": self.complete,
        }


def _pending_deliveries(field: str) -> QuerySet[Delivery]:
    return Delivery.objects.filter(**{field: OuterRef("pk")}, status=DeliveryStatus.PENDING)


def _purgeable(cutoff: datetime) -> Q:
    """A job that may go: finished, created before `cutoff`, and no longer needed by anything still under
    way: no webhook delivery of it pending (its remaining retries would be lost with it) and no re-run of
    it in a batch that has not completed (the batch's comparison reads its parents when it completes)."""
    rerun_under_way = AgentJob.objects.filter(
        parent_id=OuterRef("pk"), batch__isnull=False, batch__completed_at__isnull=True
    )
    return (
        Q(created_at__lt=cutoff, status__in=TERMINAL_STATUSES)
        & ~Exists(_pending_deliveries("job_id"))
        & ~Exists(rerun_under_way)
    )


def purgeable_jobs(*, cutoff: datetime) -> QuerySet[AgentJob]:
    """Finished jobs created before `cutoff` that nothing under way needs (`_purgeable`)."""
    return AgentJob.objects.filter(_purgeable(cutoff))


def purgeable_batches(*, cutoff: datetime) -> QuerySet[Batch]:
    """Batches created before `cutoff` none of whose jobs stays (every job is gone or purgeable) and with
    no webhook delivery pending (a batch goes with its jobs: Django's cascade)."""
    staying = AgentJob.objects.filter(batch_id=OuterRef("pk")).exclude(_purgeable(cutoff))
    return (
        Batch.objects.filter(created_at__lt=cutoff)
        .filter(~Exists(staying))
        .exclude(Exists(_pending_deliveries("batch_id")))
    )


def _count(*, cutoff: datetime, report: PurgeReport) -> None:
    jobs = purgeable_jobs(cutoff=cutoff)
    batches = purgeable_batches(cutoff=cutoff)
    job_ids = jobs.values("pk")
    batch_ids = batches.values("pk")
    deliveries = Delivery.objects.filter(job_id__in=job_ids) | Delivery.objects.filter(batch_id__in=batch_ids)
    ids = jobs.values_list("pk", flat=True).iterator(chunk_size=_COUNT_IDS)
    while chunk := list(itertools.islice(ids, _COUNT_IDS)):
        report.counts[EVENT_STREAMS] += job_events.events_count(job_ids=chunk)
    report.counts.update(
        jobs=jobs.count(),
        trace_steps=TraceStep.objects.filter(job_id__in=job_ids).count(),
        deliveries=deliveries.count(),
        delivery_attempts=DeliveryAttempt.objects.filter(delivery__in=deliveries.values("pk")).count(),
        batches=batches.count(),
    )


def _delete_in_chunks(
    queryset: QuerySet,
    *,
    chunk_size: int,
    report: PurgeReport,
    out_of_time: Callable[[], bool],
    after_chunk: Callable[[list], None] | None = None,
) -> bool:
    """Delete the rows of `queryset` by primary-key chunks; False when time ran out first.

    `after_chunk(ids)` runs once a chunk's transaction has committed.
    """
    while True:
        if out_of_time():
            return False
        ids = list(queryset.order_by("created_at", "pk").values_list("pk", flat=True)[:chunk_size])
        if not ids:
            return True
        with transaction.atomic():
            # Django's collector: the chunk's trace steps, deliveries and attempts, and NULL in re-runs'
            # `parent`, a few statements each bounded by the chunk.
            _, deleted = queryset.model.objects.filter(pk__in=ids).delete()
        report.add(deleted)
        report.chunks += 1
        if after_chunk is not None:
            after_chunk(ids)


def jobs_purge(
    *,
    older_than: timedelta,
    chunk_size: int,
    dry_run: bool = False,
    time_budget_sec: float | None = None,
    now: datetime | None = None,
) -> PurgeReport:
    """Purge finished jobs created more than `older_than` ago, then the batches left empty.

    `dry_run` only counts. With `time_budget_sec`, stops between two chunks once the budget is spent and
    returns `complete=False` (the next run continues). Returns the counts by kind of row.
    """
    cutoff = (now or timezone.now()) - older_than
    report = PurgeReport(cutoff=cutoff, dry_run=dry_run)
    if dry_run:
        _count(cutoff=cutoff, report=report)
        return report
    started = time.monotonic()

    def out_of_time() -> bool:
        return time_budget_sec is not None and time.monotonic() - started > time_budget_sec

    def forget_events(job_ids: list) -> None:
        report.counts[EVENT_STREAMS] += job_events.events_forget(job_ids=job_ids)

    report.complete = _delete_in_chunks(
        purgeable_jobs(cutoff=cutoff),
        chunk_size=chunk_size,
        report=report,
        out_of_time=out_of_time,
        after_chunk=forget_events,
    ) and _delete_in_chunks(
        purgeable_batches(cutoff=cutoff), chunk_size=chunk_size, report=report, out_of_time=out_of_time
    )
    return report
