"""Driver of the slow-receiver end-to-end test, run as a subprocess against the workers' database.

    python -m apps.webhooks.tests.e2e_driver <webhook_url> <jobs> <workers>

Waits for `workers` Celery workers, submits jobs without a webhook (baseline), then `jobs` jobs whose
webhook goes to a slow receiver, waits for all jobs to end, and prints one JSON line with the job
latencies, how many deliveries had succeeded when the last job ended, and the signing secret.
"""

from __future__ import annotations

import json
import os
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()

from django.contrib.auth import get_user_model  # noqa: E402

from agent.types import AgentOptions  # noqa: E402
from apps.agent.models import TERMINAL_STATUSES, AgentJob  # noqa: E402
from apps.agent.services.jobs import job_create  # noqa: E402
from apps.webhooks.models import Delivery, DeliveryStatus  # noqa: E402
from apps.webhooks.services import secret_create_or_rotate  # noqa: E402
from config.celery_app import app  # noqa: E402


def workers_wait(count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(app.control.ping(timeout=0.5)) >= count:
            return
    raise SystemExit(f"fewer than {count} workers answered within {timeout}s")


def jobs_run(owner, count: int, webhook_url: str, timeout: float = 30.0) -> list[float]:
    """Submit `count` jobs at once; wait for all to end. Returns their latencies (created -> finished), ms."""
    ids = [
        job_create(
            owner=owner, query=f"books about whales {i}", options=AgentOptions(), webhook_url=webhook_url
        )[0].id
        for i in range(count)
    ]
    deadline = time.monotonic() + timeout
    while AgentJob.objects.filter(id__in=ids).exclude(status__in=TERMINAL_STATUSES).exists():
        if time.monotonic() > deadline:
            raise SystemExit("jobs did not finish in time")
        time.sleep(0.05)
    jobs = AgentJob.objects.filter(id__in=ids)
    assert all(job.status == "succeeded" for job in jobs), [job.error for job in jobs]
    return [(job.finished_at - job.created_at).total_seconds() * 1000 for job in jobs]


def main() -> None:
    webhook_url, count, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    workers_wait(workers, timeout=30)
    owner = get_user_model().objects.create_user(username="e2e-webhooks")
    secret, _ = secret_create_or_rotate(user=owner)
    jobs_run(owner, 2, "")  # warm-up: first imports and model loads in the worker
    baseline = jobs_run(owner, count, "")
    slow = jobs_run(owner, count, webhook_url)
    delivered = Delivery.objects.filter(status=DeliveryStatus.SUCCEEDED).count()
    print(
        json.dumps(
            {
                "baseline_ms": baseline,
                "slow_ms": slow,
                "delivered_when_jobs_done": delivered,
                "secret": secret,
            }
        )
    )


if __name__ == "__main__":
    main()
