"""Sending again: a redelivery asked by the job's owner, and the sweep of overdue deliveries."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.agent.models import AgentJob
from apps.webhooks.models import EVENT_TYPE_BY_JOB_STATUS, Delivery, DeliveryStatus, WebhookEndpointBlock
from apps.webhooks.services import sending
from apps.webhooks.services.events import event_enqueue
from core.errors import Conflict, NotFound


def delivery_redeliver(*, job: AgentJob, user) -> Delivery:
    """Send a terminal job's event again: same event id (`webhook-id`), a new series of attempts.

    Lifts a 410 block on the URL (the owner says the endpoint is back). Creates the delivery when the
    job has none yet. Raises `NotFound` when `user` does not own the job, `Conflict` when the job is not
    terminal or has no webhook_url. Returns the delivery, pending, with its send enqueued after commit.
    """
    if job.owner_id != user.pk:
        raise NotFound("Job not found.")
    if not job.is_terminal:
        raise Conflict("The job has not finished yet; there is no event to deliver.", code="job_not_terminal")
    if not job.webhook_url:
        raise Conflict("The job has no webhook_url.", code="no_webhook_url")
    now = timezone.now()
    with transaction.atomic():
        WebhookEndpointBlock.objects.filter(owner_id=job.owner_id, url=job.webhook_url).delete()
        delivery = Delivery.objects.select_for_update().filter(job=job).order_by("-created_at").first()
        if delivery is None:
            delivery = event_enqueue(event_type=EVENT_TYPE_BY_JOB_STATUS[job.status], job=job)
            assert delivery is not None
            return delivery
        Delivery.objects.filter(pk=delivery.pk).update(
            status=DeliveryStatus.PENDING,
            series=F("series") + 1,
            attempts=0,
            next_attempt_at=now,
            locked_until=None,
            finished_at=None,
            last_status_code=None,
            last_error="",
        )
        delivery.refresh_from_db()
        delivery_id, series = delivery.id, delivery.series
        transaction.on_commit(lambda: sending.enqueue_send(delivery_id=delivery_id, series=series))
    return delivery


def deliveries_sweep(*, limit: int = 500) -> int:
    """Enqueue pending deliveries whose attempt is overdue by WEBHOOK_SWEEP_OVERDUE_SEC. Returns the count.

    This is how retries after long waits (over WEBHOOK_COUNTDOWN_MAX_SEC) are sent, and how a message
    lost to a broker outage or a crash is recovered. Duplicates are harmless: `delivery_send` claims
    the row.
    """
    now = timezone.now()
    overdue = now - timedelta(seconds=settings.WEBHOOK_SWEEP_OVERDUE_SEC)
    rows = list(
        Delivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lt=overdue)
        .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
        .order_by("next_attempt_at")
        .values_list("id", "series")[:limit]
    )
    for delivery_id, series in rows:
        sending.enqueue_send(delivery_id=delivery_id, series=series)
    return len(rows)
