"""`manage.py rerun_jobs`: re-run a user's past jobs as a batch, for operators without HTTP access.

The same selection, overrides, limits and services as `POST /api/agent/batches`; with `--wait` (the
default) it shows a progress bar on a terminal and prints the comparison summary at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from apps.agent import selectors
from apps.agent.serializers import BatchCreateInputSerializer
from apps.agent.services import batches as batch_services
from core.errors import ApplicationError


class Command(BaseCommand):
    help = "Re-run past jobs of one user as a batch (optionally with overrides) and compare the answers."

    def add_arguments(self, parser):
        parser.add_argument("--owner", required=True, help="Username whose jobs are re-run.")
        chosen = parser.add_argument_group("selection (--ids, or filters, or --all)")
        chosen.add_argument("--ids", nargs="+", metavar="JOB_ID", help="Explicit job ids.")
        chosen.add_argument("--status", choices=["succeeded", "failed", "cancelled"])
        chosen.add_argument("--created-after", metavar="ISO8601", help="Inclusive, e.g. 2026-11-01T00:00Z.")
        chosen.add_argument("--created-before", metavar="ISO8601", help="Exclusive.")
        chosen.add_argument("--degraded-only", action="store_true")
        chosen.add_argument("--all", action="store_true", help="Every finished job of the owner.")
        over = parser.add_argument_group("overrides")
        over.add_argument("--model")
        over.add_argument("--cost-mode", choices=["paid", "hybrid"])
        over.add_argument("--top-k", type=int)
        over.add_argument("--filters", metavar="JSON", help='e.g. \'{"language": "es"}\'')
        over.add_argument("--vector-store-build", metavar="BUILD_ID")
        parser.add_argument(
            "--wait",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="Wait for the end and print the comparison (default), or return at once.",
        )
        parser.add_argument("--timeout", type=float, default=3600.0, help="Seconds --wait waits at most.")
        parser.add_argument("--poll-interval", type=float, default=1.0)

    def handle(self, *args, **opts):
        owner = get_user_model().objects.filter(username=opts["owner"]).first()
        if owner is None:
            raise CommandError(f"No user {opts['owner']!r}.")
        data = BatchCreateInputSerializer(data=self._body(opts))
        if not data.is_valid():
            raise CommandError(f"Invalid arguments: {json.dumps(data.errors, default=str)}")
        values = data.validated_data
        job_filter = values.get("filter")
        try:
            batch, _ = batch_services.batch_create(
                owner=owner,
                job_ids=values.get("jobs"),
                job_filter=batch_services.JobFilter(**job_filter) if job_filter is not None else None,
                overrides=values.get("overrides"),
            )
        except ApplicationError as exc:
            details = f" {json.dumps(exc.details, default=str)}" if exc.details else ""
            raise CommandError(f"{exc.code}: {exc.message}{details}") from None
        self.stdout.write(f"batch {batch.id}: {batch.size} jobs queued")
        if not opts["wait"]:
            self.stdout.write(f"follow it with GET /api/agent/batches/{batch.id}")
            return
        self._wait(batch, timeout=opts["timeout"], interval=opts["poll_interval"])
        batch.refresh_from_db()
        self._print_summary(batch)

    def _body(self, opts) -> dict:
        filter_given = any(opts[k] for k in ("status", "created_after", "created_before", "degraded_only"))
        if opts["ids"] and (filter_given or opts["all"]):
            raise CommandError("Choose jobs with --ids, or with filters/--all, not both.")
        body: dict = {}
        if opts["ids"]:
            body["jobs"] = opts["ids"]
        elif filter_given or opts["all"]:
            body["filter"] = {
                key: opts[key]
                for key in ("status", "created_after", "created_before", "degraded_only")
                if opts[key]
            }
        else:
            raise CommandError("Choose jobs: --ids, or filters (--status, --created-after, ...), or --all.")
        overrides = {
            key: opts[key]
            for key in ("model", "cost_mode", "top_k", "vector_store_build")
            if opts[key] is not None
        }
        if opts["filters"]:
            try:
                overrides["filters"] = json.loads(opts["filters"])
            except json.JSONDecodeError as exc:
                raise CommandError(f"--filters is not JSON: {exc}") from None
        if overrides:
            body["overrides"] = overrides
        return body

    def _wait(self, batch, *, timeout: float, interval: float) -> None:
        deadline = time.monotonic() + timeout
        with tqdm(total=batch.size, unit="job", disable=not sys.stderr.isatty(), file=sys.stderr) as bar:
            while True:
                batch.refresh_from_db(fields=["completed_at", "cancelled_at"])
                finished = selectors.batch_progress_many(batch_ids=[batch.id])[batch.id]["finished"]
                bar.update(finished - bar.n)
                if batch.completed_at is not None:
                    return
                if time.monotonic() > deadline:
                    raise CommandError(
                        f"batch {batch.id} is still running after {timeout:.0f} s ({finished}/{batch.size} "
                        f"finished); it goes on: follow it with GET /api/agent/batches/{batch.id}"
                    )
                time.sleep(interval)

    def _print_summary(self, batch) -> None:
        view = selectors.batch_view(batch=batch)
        p, t, c = view["progress"], view["totals"], view["comparison"]
        lat = t["latency_ms"]
        self.stdout.write(
            f"batch {batch.id} {batch.status}: {p['succeeded']} succeeded, {p['failed']} failed, "
            f"{p['cancelled']} cancelled of {p['total']}"
        )
        self.stdout.write(
            f"totals: {t['total_tokens']} tokens, {t['cost_usd']} USD, "
            f"latency p50 {lat['p50']} ms, p95 {lat['p95']} ms"
        )
        if c is None:
            self.stdout.write("comparison: nothing to compare (no original job finished with an answer)")
        else:
            self.stdout.write(
                f"comparison: {c['compared']} of {c['items']} compared; {c['identical']} identical, "
                f"{c['reordered']} reordered, {c['changed']} changed; mean Jaccard {c['mean_jaccard']}"
            )
            d, cl, cc = c["degraded"], c["latency_ms"], c["cost_usd"]
            self.stdout.write(
                f"degraded: {d['became_degraded']} became degraded, {d['recovered']} recovered; "
                f"latency p50 {cl['parent_p50']} -> {cl['rerun_p50']} ms; "
                f"cost {cc['parent_total']} -> {cc['rerun_total']} USD"
            )
        self.stdout.write(f"report: /api/agent/batches/{batch.id}/report?format=html (or format=csv)")
