"""Events: check a `webhook_url` at submission, record the event of a terminal job or a completed batch.

`event_enqueue()` runs inside the transaction that makes the outcome durable; the send is published
after commit (`sending.enqueue_send`).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.agent.models import AgentJob, Batch
from apps.webhooks.models import (
    BATCH_EVENT_TYPES,
    EVENT_TYPE_BY_JOB_STATUS,
    JOB_EVENT_TYPES,
    Delivery,
    DeliveryStatus,
    WebhookEndpointBlock,
)
from apps.webhooks.services import sending
from apps.webhooks.services.http_attempt import cap
from apps.webhooks.services.payloads import batch_payload, job_payload
from apps.webhooks.ssrf import WebhookURLRejected, validate_webhook_url
from core.errors import ValidationFailed


def webhook_url_validate(*, url: str) -> str:
    """Check a `webhook_url` at submission. Returns it unchanged; raises `ValidationFailed` (400).

    The same check runs again at send time (DNS may change); this one gives the client a clear,
    immediate refusal. `details` carries {"field": "webhook_url", "reason": <code>}.
    """
    try:
        validate_webhook_url(url, allowed_hosts=settings.WEBHOOK_ALLOWED_HOSTS)
    except WebhookURLRejected as exc:
        raise ValidationFailed(
            f"webhook_url is not allowed: {exc.message}",
            code="webhook_url_rejected",
            details={"field": "webhook_url", "reason": exc.reason},
        ) from None
    return url


def event_enqueue(
    *, event_type: str, job: AgentJob | None = None, batch: Batch | None = None
) -> Delivery | None:
    """Record the event of a terminal job (or a completed batch) and send it after commit.

    Call it INSIDE the transaction that makes the outcome durable, with exactly one of `job`/`batch`
    reflecting that outcome. Returns None when there is no webhook_url; otherwise the delivery. Calling
    it again for the same outcome returns the existing delivery and sends nothing more (one event per
    (job, event type) and per (batch, event type)). An endpoint disabled by a 410 gets a delivery in
    status "disabled" that is never sent. Raises ValueError when the arguments do not describe a
    terminal outcome (a wiring bug: it rolls the caller's transaction back).
    """
    if (job is None) == (batch is None):
        raise ValueError("event_enqueue needs exactly one of job or batch")
    now = timezone.now()
    if job is not None:
        if event_type not in JOB_EVENT_TYPES or EVENT_TYPE_BY_JOB_STATUS.get(job.status) != event_type:
            raise ValueError(f"{event_type!r} does not describe job {job.id} in status {job.status!r}")
        url, owner_id, lookup = job.webhook_url, job.owner_id, {"job": job}
        payload = job_payload(job=job, event_type=event_type, now=now)
    else:
        assert batch is not None
        if event_type not in BATCH_EVENT_TYPES:
            raise ValueError(f"{event_type!r} is not a batch event")
        url, owner_id, lookup = batch.webhook_url, batch.owner_id, {"batch": batch}
        payload = batch_payload(batch=batch, event_type=event_type, now=now)
    if not url:
        return None

    block = WebhookEndpointBlock.objects.filter(owner_id=owner_id, url=url).first()
    defaults: dict[str, Any] = {"owner_id": owner_id, "url": url, "payload": payload, "next_attempt_at": now}
    if block is not None:
        defaults.update(
            status=DeliveryStatus.DISABLED,
            next_attempt_at=None,
            finished_at=now,
            last_error=cap(f"Not sent: the endpoint was disabled after HTTP {block.status_code or 410}."),
        )
    # get_or_create tolerates a concurrent insert of the same key (it re-reads after the IntegrityError).
    delivery, created = Delivery.objects.get_or_create(**lookup, event_type=event_type, defaults=defaults)
    if created and delivery.status == DeliveryStatus.PENDING:
        transaction.on_commit(lambda: sending.enqueue_send(delivery_id=delivery.id, series=delivery.series))
    return delivery
