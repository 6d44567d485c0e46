"""Events: check a `webhook_url` at submission, record the event of a job or a batch that ended.

`event_enqueue()` runs inside the transaction that makes the outcome durable; the send is published
after commit (`sending.enqueue_send`).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.webhooks.models import (
    BATCH_EVENT_TYPES,
    JOB_EVENT_TYPES,
    Delivery,
    DeliveryStatus,
    WebhookEndpointBlock,
)
from apps.webhooks.services import sending
from apps.webhooks.services.http_attempt import cap
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
    *,
    event_type: str,
    owner_id: int,
    url: str,
    payload: dict[str, Any],
    job_id: Any = None,
    batch_id: Any = None,
) -> Delivery | None:
    """Record an event for `url` (the owner's webhook) and send it after commit.

    The agent app calls it (`apps.agent.services.events`) INSIDE the transaction that makes the job's (or
    batch's) outcome durable, with exactly one of `job_id` / `batch_id` and the event's JSON `payload`.
    Returns None when there is no `url`; otherwise the delivery. Calling it again for the same outcome
    returns the existing delivery and sends nothing more (one event per (job, event type) and per
    (batch, event type)). An endpoint disabled by a 410 gets a delivery in status "disabled" that is
    never sent. Raises ValueError for an event type that is not a job's (or a batch's) event (a wiring
    bug: it rolls the caller's transaction back).
    """
    if (job_id is None) == (batch_id is None):
        raise ValueError("event_enqueue needs exactly one of job_id or batch_id")
    if event_type not in (JOB_EVENT_TYPES if job_id is not None else BATCH_EVENT_TYPES):
        raise ValueError(f"{event_type!r} is not a {'job' if job_id is not None else 'batch'} event")
    if not url:
        return None
    now = timezone.now()
    lookup = {"job_id": job_id} if job_id is not None else {"batch_id": batch_id}
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
