"""Sending again: a redelivery asked by the job's owner, and the sweep of overdue deliveries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.webhooks.models import Delivery, DeliveryStatus, WebhookEndpointBlock
from apps.webhooks.services import sending


def delivery_redeliver(*, job_id: Any, owner_id: int, url: str) -> Delivery | None:
    """Send the job's latest event again: same event id (`webhook-id`), a new series of attempts.

    Lifts a 410 block on (owner, url): the owner says the endpoint is back. Returns the delivery, pending,
    with its send enqueued after commit; None when the job has no delivery yet (the caller records the
    event then, `apps.agent.services.events.job_event_redeliver`). Call it inside a transaction.

    An attempt in flight keeps its lease (`locked_until`): the new series is sent once it has ended (the
    enqueued send skips a locked row; the sweep sends it when the lease is over), never beside it.
    """
    now = timezone.now()
    WebhookEndpointBlock.objects.filter(owner_id=owner_id, url=url).delete()
    delivery = Delivery.objects.select_for_update().filter(job_id=job_id).order_by("-created_at").first()
    if delivery is None:
        return None
    Delivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.PENDING,
        series=F("series") + 1,
        attempts=0,
        next_attempt_at=now,
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
