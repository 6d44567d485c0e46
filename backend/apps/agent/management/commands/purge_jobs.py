"""`manage.py purge_jobs`: purge finished jobs past their retention, now, for operators.

The same service as the beat task (`agent.jobs_purge`): chunks of primary keys, one short transaction
each. Without `--older-than` it uses AGENT_JOB_RETENTION_DAYS; `--dry-run` only counts.
"""

from __future__ import annotations

import json
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.agent.services import retention


def _days(value: str) -> float:
    try:
        days = float(value)
    except ValueError:
        raise CommandError(f"--older-than {value!r}: expected a number of days, e.g. 30 or 0.5") from None
    if days < 0:
        raise CommandError(f"--older-than {value!r}: expected a number of days >= 0")
    return days


class Command(BaseCommand):
    help = "Delete finished jobs older than the retention, with their trace, webhook deliveries and batches."

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            metavar="DAYS",
            help="Purge finished jobs created more than DAYS days ago (default: AGENT_JOB_RETENTION_DAYS).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count what would go; delete nothing.")
        parser.add_argument(
            "--chunk-size",
            type=int,
            default=None,
            help="Jobs per transaction (default: AGENT_PURGE_CHUNK_SIZE).",
        )
        parser.add_argument("--json", action="store_true", help="Print the counts as one JSON object.")

    def handle(self, *args, **opts):
        if opts["older_than"] is not None:
            days = _days(opts["older_than"])
        elif settings.AGENT_JOB_RETENTION_DAYS is not None:
            days = settings.AGENT_JOB_RETENTION_DAYS
        else:
            raise CommandError("AGENT_JOB_RETENTION_DAYS is empty (keep for ever): pass --older-than DAYS.")
        chunk_size = settings.AGENT_PURGE_CHUNK_SIZE if opts["chunk_size"] is None else opts["chunk_size"]
        if chunk_size < 1:
            raise CommandError("--chunk-size: expected an integer >= 1")
        report = retention.jobs_purge(
            older_than=timedelta(days=days), chunk_size=chunk_size, dry_run=opts["dry_run"]
        )
        if opts["json"]:
            self.stdout.write(json.dumps(report.as_dict()))
            return
        c = report.counts
        verb = "would delete" if report.dry_run else "deleted"
        self.stdout.write(
            f"jobs created before {report.cutoff:%Y-%m-%d %H:%M:%S} UTC: {verb} {c['jobs']} jobs, "
            f"{c['trace_steps']} trace steps, {c['deliveries']} webhook deliveries "
            f"({c['delivery_attempts']} attempts), {c['batches']} batches, {c['event_streams']} event streams"
            + ("" if report.dry_run else f" in {report.chunks} chunks")
        )
