"""Sending: publish a delivery's send task, and perform ONE attempt of it (`delivery_send`).

The task (`agent.delivery_send`, queue "webhooks") calls `delivery_send()`, which claims the row, makes one
HTTP attempt, records it as a `DeliveryAttempt` row and says whether and when to try again; the task
schedules that retry.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.core import publish
from apps.webhooks.crypto import SecretUnreadable
from apps.webhooks.models import (
    AttemptOutcome,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    WebhookEndpointBlock,
)
from apps.webhooks.services import http_attempt as http
from apps.webhooks.services.http_attempt import HTTPResult, cap
from apps.webhooks.services.retry_policy import decide, max_attempts
from apps.webhooks.services.signing import signing_secrets

logger = logging.getLogger("apps.webhooks.services")

DUE_SKEW = timedelta(seconds=2)


def enqueue_send(*, delivery_id: int, series: int, countdown: float | None = None) -> None:
    """Publish the send task. A broker failure is logged, not raised: the sweep re-enqueues overdue rows."""
    try:
        publish.task_publish(
            publish.DELIVERY_SEND, args=[delivery_id], kwargs={"series": series}, countdown=countdown
        )
    except Exception:
        logger.warning(
            "webhook delivery %s not enqueued; the sweep will retry it", delivery_id, exc_info=True
        )


@dataclass(frozen=True)
class SendOutcome:
    """What one `delivery_send` call did.

    status: "succeeded" | "retry" | "failed" | "disabled" | "skipped" (not due, locked by another
    worker, already finished, or superseded by a redelivery). `retry_in` (seconds) is set only for
    "retry": the caller schedules the next attempt then.
    """

    status: str
    retry_in: float | None = None
    series: int | None = None
    attempt_id: int | None = None
    status_code: int | None = None
    error: str = ""


def delivery_send(*, delivery_id: int, series: int | None = None) -> SendOutcome:
    """Perform ONE attempt of a pending delivery and record it. Never raises for receiver failures.

    Claims the delivery first (pending, due, not locked; and of `series` when given) so that duplicate
    task messages never send concurrently or ahead of the backoff; returns status "skipped" when the
    claim fails. The HTTP call runs outside any transaction. Returns the outcome, with `retry_in` set
    when the caller must schedule another attempt.
    """
    now = timezone.now()
    # Outlasts one attempt (its HTTP exchange is capped by the deadline) plus DNS and bookkeeping; if the
    # worker dies mid-attempt the lease expires and the sweep sends the delivery again.
    lease = timedelta(seconds=settings.WEBHOOK_ATTEMPT_DEADLINE_SEC + 30)
    claim = (
        Delivery.objects.filter(pk=delivery_id, status=DeliveryStatus.PENDING)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now + DUE_SKEW))
        .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
    )
    if series is not None:
        claim = claim.filter(series=series)
    if not claim.update(locked_until=now + lease, attempts=F("attempts") + 1):
        return SendOutcome("skipped")
    delivery = Delivery.objects.get(pk=delivery_id)
    number = delivery.attempts
    started_at = timezone.now()
    started = time.monotonic()

    if WebhookEndpointBlock.objects.filter(owner_id=delivery.owner_id, url=delivery.url).exists():
        result = HTTPResult(error="Not sent: the endpoint was disabled after HTTP 410.")
        outcome, retry_in, error = AttemptOutcome.DISABLED, None, result.error
    elif number > max_attempts():
        # Earlier claims never recorded an outcome (the worker died mid-attempt): stop the loop.
        result = HTTPResult(error=f"Gave up: {number - 1} attempts were interrupted or made.")
        outcome, retry_in, error = AttemptOutcome.FAILED, None, result.error
    else:
        try:
            secrets = signing_secrets(user_id=delivery.owner_id, now=started_at)
            result = http.http_attempt(delivery=delivery, secrets=secrets)
            outcome, retry_in, error = decide(result, attempt_number=number)
        except SecretUnreadable as exc:
            result = HTTPResult(error=str(exc))
            outcome, retry_in, error = AttemptOutcome.FAILED, None, result.error
        except Exception as exc:
            # A bug, not the receiver's doing: record it on the row (never lose the delivery silently),
            # log it loudly, and do not retry in a loop.
            logger.exception("webhook %s attempt crashed", delivery.event_id)
            result = HTTPResult(error=cap(f"Internal error: {type(exc).__name__}"))
            outcome, retry_in, error = AttemptOutcome.FAILED, None, result.error
    duration_ms = (time.monotonic() - started) * 1000

    return _attempt_record(
        delivery=delivery,
        number=number,
        started_at=started_at,
        duration_ms=duration_ms,
        result=result,
        outcome=outcome,
        retry_in=retry_in,
        error=error,
    )


def _attempt_record(
    *,
    delivery: Delivery,
    number: int,
    started_at: datetime,
    duration_ms: float,
    result: HTTPResult,
    outcome: str,
    retry_in: float | None,
    error: str,
) -> SendOutcome:
    """Store the attempt and move the delivery to its next state, unless a redelivery superseded it."""
    now = timezone.now()
    with transaction.atomic():
        attempt = DeliveryAttempt.objects.create(
            delivery=delivery,
            series=delivery.series,
            number=number,
            started_at=started_at,
            duration_ms=duration_ms,
            status_code=result.status_code,
            outcome=outcome,
            error=cap(error),
            response_excerpt=result.excerpt,
            remote_address=result.remote_address,
            retry_in_sec=retry_in,
        )
        status = {
            AttemptOutcome.SUCCEEDED: DeliveryStatus.SUCCEEDED,
            AttemptOutcome.RETRY: DeliveryStatus.PENDING,
            AttemptOutcome.FAILED: DeliveryStatus.FAILED,
            # The 410 itself is a failed delivery; an endpoint blocked before sending is "disabled".
            AttemptOutcome.DISABLED: DeliveryStatus.FAILED if result.status_code else DeliveryStatus.DISABLED,
        }[outcome]
        changes: dict[str, Any] = {
            "status": status,
            "last_status_code": result.status_code,
            "last_error": cap(error),
            "locked_until": None,
            "next_attempt_at": now + timedelta(seconds=retry_in) if retry_in is not None else None,
            "finished_at": None if status == DeliveryStatus.PENDING else now,
        }
        # Conditional on the series: a redelivery during this attempt owns the row now.
        updated = Delivery.objects.filter(pk=delivery.pk, series=delivery.series).update(**changes)
        if updated and outcome == AttemptOutcome.DISABLED and result.status_code == 410:
            _endpoint_disable(delivery=delivery, status_code=410, now=now)
    if not updated:
        return SendOutcome("skipped", attempt_id=attempt.id, status_code=result.status_code, error=error)
    logger.info(
        "webhook %s attempt %s.%s -> %s (%s)",
        delivery.event_id,
        delivery.series,
        number,
        outcome,
        result.status_code or error,
    )
    return SendOutcome(
        "retry" if status == DeliveryStatus.PENDING else str(status),
        retry_in=retry_in,
        series=delivery.series,
        attempt_id=attempt.id,
        status_code=result.status_code,
        error=error,
    )


def _endpoint_disable(*, delivery: Delivery, status_code: int, now: datetime) -> None:
    """Block the owner's URL after a 410 and mark its other pending deliveries disabled (never sent)."""
    WebhookEndpointBlock.objects.get_or_create(
        owner_id=delivery.owner_id,
        url=delivery.url,
        defaults={"status_code": status_code, "reason": f"HTTP {status_code} Gone", "delivery": delivery},
    )
    Delivery.objects.filter(
        owner_id=delivery.owner_id, url=delivery.url, status=DeliveryStatus.PENDING
    ).exclude(pk=delivery.pk).update(
        status=DeliveryStatus.DISABLED,
        next_attempt_at=None,
        finished_at=now,
        last_error=f"Not sent: the endpoint was disabled after HTTP {status_code}.",
    )
