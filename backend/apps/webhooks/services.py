"""Webhook writes: secrets, events, one delivery attempt at a time, redelivery, and the sweep.

The flow: the jobs app calls `event_enqueue()` inside the transaction that makes a job terminal; after
commit the `agent.delivery_send` task (queue "webhooks") calls `delivery_send()`, which performs ONE
attempt and says whether and when to try again; the task schedules that retry. Every attempt is a
`DeliveryAttempt` row. See docs/webhooks.md for the receiver's side.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone
from standardwebhooks import Webhook

from apps.agent.models import AgentJob, Batch, JobStatus
from apps.core import publish
from core.errors import Conflict, NotFound, ValidationFailed

from .crypto import SecretUnreadable, display_prefix, secret_decrypt, secret_encrypt, secret_generate
from .models import (
    BATCH_EVENT_TYPES,
    EVENT_TYPE_BY_JOB_STATUS,
    JOB_EVENT_TYPES,
    AttemptOutcome,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    WebhookEndpointBlock,
    WebhookSecret,
)
from .ssrf import WebhookURLRejected, validate_webhook_url
from .transport import pinned_client

logger = logging.getLogger(__name__)

# Links in payloads are paths: the service does not know the public host name it is reached by.
JOB_LINK = "/api/agent/jobs/{id}"
BATCH_LINK = "/api/agent/batches/{id}"
# A task message may run slightly before the stored due time (clock skew between hosts).
DUE_SKEW = timedelta(seconds=2)
ERROR_MAX_CHARS = 300


def max_attempts() -> int:
    """Attempts of one series: the first one plus one per entry of WEBHOOK_RETRY_SCHEDULE."""
    return len(settings.WEBHOOK_RETRY_SCHEDULE) + 1


# --- Secrets -------------------------------------------------------------------------------------


def secret_create_or_rotate(*, user) -> tuple[str, WebhookSecret]:
    """Create the user's signing secret, or rotate it. Returns (plaintext, row); show the plaintext once.

    On rotation the current secret becomes the previous one and keeps signing (a second signature) for
    WEBHOOK_SECRET_GRACE_SEC. Rotating again within the grace period drops the oldest secret.
    """
    plaintext = secret_generate()
    now = timezone.now()
    with transaction.atomic():
        row = WebhookSecret.objects.select_for_update().filter(user=user).first()
        if row is None:
            row = WebhookSecret.objects.create(
                user=user, secret_encrypted=secret_encrypt(plaintext), prefix=display_prefix(plaintext)
            )
            return plaintext, row
        row.previous_secret_encrypted = row.secret_encrypted
        row.previous_prefix = row.prefix
        row.previous_valid_until = now + timedelta(seconds=settings.WEBHOOK_SECRET_GRACE_SEC)
        row.secret_encrypted = secret_encrypt(plaintext)
        row.prefix = display_prefix(plaintext)
        row.rotated_at = now
        row.save()
    return plaintext, row


def _signing_secrets(*, user_id: int, now: datetime) -> list[str]:
    """The secrets that sign a delivery now: the current one, and the previous one during its grace.

    A user who never created a secret gets one here, so that every delivery is signed; they see it
    only by rotating (the previous one then keeps signing during the grace period). Raises
    `SecretUnreadable`.
    """
    row = WebhookSecret.objects.filter(user_id=user_id).first()
    if row is None:
        plaintext = secret_generate()
        row, _ = WebhookSecret.objects.get_or_create(
            user_id=user_id,
            defaults={"secret_encrypted": secret_encrypt(plaintext), "prefix": display_prefix(plaintext)},
        )
    keys = [secret_decrypt(row.secret_encrypted)]
    if row.previous_secret_encrypted and row.previous_valid_until and row.previous_valid_until > now:
        keys.append(secret_decrypt(row.previous_secret_encrypted))
    return keys


# --- URL validation ------------------------------------------------------------------------------


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


# --- Events --------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _job_payload(*, job: AgentJob, event_type: str, now: datetime) -> dict[str, Any]:
    result = job.result or {}
    return {
        "type": event_type,
        "timestamp": _iso(job.finished_at or now),
        "data": {
            "job_id": str(job.id),
            "status": job.status,
            "degraded": job.degraded,
            "message": result.get("message"),
            "results": result.get("results", []),
            "actions": result.get("actions", []),
            "error": job.error,
            "batch_id": str(job.batch_id) if job.batch_id else None,
            "created_at": _iso(job.created_at),
            "finished_at": _iso(job.finished_at),
            # The trace stays out of the body (it can be large); it is one GET away.
            "links": {"job": JOB_LINK.format(id=job.id)},
        },
    }


def _batch_payload(*, batch: Batch, event_type: str, now: datetime) -> dict[str, Any]:
    counts = dict(batch.jobs.order_by().values_list("status").annotate(n=Count("id")))
    by_status = {status: counts.get(status, 0) for status in JobStatus.values}
    return {
        "type": event_type,
        "timestamp": _iso(batch.completed_at or now),
        "data": {
            "batch_id": str(batch.id),
            "status": "cancelled" if batch.cancelled_at else "completed",
            "jobs": {"total": sum(by_status.values()), **by_status},
            "created_at": _iso(batch.created_at),
            "completed_at": _iso(batch.completed_at),
            "links": {"batch": BATCH_LINK.format(id=batch.id)},
        },
    }


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
        payload = _job_payload(job=job, event_type=event_type, now=now)
    else:
        assert batch is not None
        if event_type not in BATCH_EVENT_TYPES:
            raise ValueError(f"{event_type!r} is not a batch event")
        url, owner_id, lookup = batch.webhook_url, batch.owner_id, {"batch": batch}
        payload = _batch_payload(batch=batch, event_type=event_type, now=now)
    if not url:
        return None

    block = WebhookEndpointBlock.objects.filter(owner_id=owner_id, url=url).first()
    defaults: dict[str, Any] = {"owner_id": owner_id, "url": url, "payload": payload, "next_attempt_at": now}
    if block is not None:
        defaults.update(
            status=DeliveryStatus.DISABLED,
            next_attempt_at=None,
            finished_at=now,
            last_error=_cap(f"Not sent: the endpoint was disabled after HTTP {block.status_code or 410}."),
        )
    # get_or_create tolerates a concurrent insert of the same key (it re-reads after the IntegrityError).
    delivery, created = Delivery.objects.get_or_create(**lookup, event_type=event_type, defaults=defaults)
    if created and delivery.status == DeliveryStatus.PENDING:
        transaction.on_commit(lambda: _enqueue_send(delivery_id=delivery.id, series=delivery.series))
    return delivery


def _enqueue_send(*, delivery_id: int, series: int, countdown: float | None = None) -> None:
    """Publish the send task. A broker failure is logged, not raised: the sweep re-enqueues overdue rows."""
    try:
        publish.task_publish(
            publish.DELIVERY_SEND, args=[delivery_id], kwargs={"series": series}, countdown=countdown
        )
    except Exception:
        logger.warning(
            "webhook delivery %s not enqueued; the sweep will retry it", delivery_id, exc_info=True
        )


# --- Sending -------------------------------------------------------------------------------------


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


@dataclass
class _HTTPResult:
    status_code: int | None = None
    error: str = ""
    transient: bool = False  # a network failure, timeout or DNS failure: worth another try
    retry_after: float | None = None
    excerpt: str = ""
    remote_address: str = ""


def _cap(text: str, limit: int = ERROR_MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _epoch_seconds() -> int:
    """Now, in whole seconds: the `webhook-timestamp` resolution (a seam for tests)."""
    return int(time.time())


def _sign(*, secrets: list[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """The `webhook-signature` header: one `v1,<sig>` per secret, space-separated (Standard Webhooks)."""
    return " ".join(Webhook(secret).sign(msg_id, timestamp, body) for secret in secrets)


def _http_attempt(*, delivery: Delivery, secrets: list[str]) -> _HTTPResult:
    """Validate the URL, sign, POST once to the checked address, and read a capped response. No DB access."""
    try:
        target = validate_webhook_url(delivery.url, allowed_hosts=settings.WEBHOOK_ALLOWED_HOSTS)
    except WebhookURLRejected as exc:
        return _HTTPResult(error=_cap(f"URL refused ({exc.reason}): {exc.message}"), transient=exc.transient)
    body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False)
    # Fresh per attempt: receivers reject timestamps outside their tolerance (5 minutes by default).
    timestamp = datetime.fromtimestamp(_epoch_seconds(), tz=UTC)
    headers = {
        "content-type": "application/json",
        # Plain bodies only: the excerpt is read raw and capped, so no decompression of a receiver's bomb.
        "accept-encoding": "identity",
        "user-agent": settings.WEBHOOK_USER_AGENT,
        "webhook-id": delivery.event_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": _sign(secrets=secrets, msg_id=delivery.event_id, timestamp=timestamp, body=body),
    }
    timeout = httpx.Timeout(
        connect=settings.WEBHOOK_CONNECT_TIMEOUT_SEC,
        read=settings.WEBHOOK_READ_TIMEOUT_SEC,
        write=settings.WEBHOOK_READ_TIMEOUT_SEC,
        pool=settings.WEBHOOK_CONNECT_TIMEOUT_SEC,
    )
    deadline = time.monotonic() + settings.WEBHOOK_ATTEMPT_DEADLINE_SEC
    result = _HTTPResult(remote_address=target.address)
    try:
        with (
            pinned_client(target=target, timeout=timeout, deadline=deadline) as client,
            client.stream("POST", target.url, content=body.encode("utf-8"), headers=headers) as response,
        ):
            result.status_code = response.status_code
            result.retry_after = _parse_retry_after(response.headers.get("retry-after"), now=timezone.now())
            result.excerpt = _read_excerpt(response)
    except httpx.TimeoutException as exc:
        if result.status_code is None:
            result.error, result.transient = f"timeout ({type(exc).__name__})", True
    except httpx.HTTPError as exc:
        # Connection refused/reset, protocol errors: the request may not have arrived; try again.
        if result.status_code is None:
            result.error, result.transient = _cap(f"{type(exc).__name__}: {exc}"), True
    return result


def _read_excerpt(response: httpx.Response) -> str:
    """The start of the body, reading at most WEBHOOK_RESPONSE_MAX_BYTES (the rest is never read).

    A receiver that answers and then stalls or drips its body has already given its status: a read
    timeout (or the attempt deadline) here is not a failed delivery.
    """
    limit = settings.WEBHOOK_RESPONSE_MAX_BYTES
    data = bytearray()
    try:
        for chunk in response.iter_raw():
            data.extend(chunk)
            if len(data) >= limit:
                break
    except httpx.HTTPError:
        pass
    text = bytes(data[:limit]).decode("utf-8", errors="replace")
    return text[: settings.WEBHOOK_RESPONSE_EXCERPT_CHARS]


def _decide(result: _HTTPResult, *, attempt_number: int) -> tuple[str, float | None, str]:
    """(outcome, retry delay in seconds or None, error text) for one attempt's result.

    2xx succeeds; 3xx (not followed), 410 and other 4xx fail permanently; 429, 5xx, timeouts and
    connection errors retry on WEBHOOK_RETRY_SCHEDULE (with jitter, and at least Retry-After up to
    WEBHOOK_RETRY_AFTER_MAX_SEC) until the series has used `max_attempts()`.
    """
    code = result.status_code
    if code is not None and 200 <= code < 300:
        return AttemptOutcome.SUCCEEDED, None, ""
    if code is None:
        error = result.error
        retryable = result.transient
    elif 300 <= code < 400:
        return AttemptOutcome.FAILED, None, f"HTTP {code}: redirects are not followed"
    elif code == 410:
        return AttemptOutcome.DISABLED, None, "HTTP 410 Gone: the endpoint is disabled for later events"
    else:
        error = f"HTTP {code}"
        retryable = code == 429 or code >= 500
    if not retryable:
        return AttemptOutcome.FAILED, None, error
    schedule = settings.WEBHOOK_RETRY_SCHEDULE
    if attempt_number > len(schedule):
        return AttemptOutcome.FAILED, None, _cap(f"{error}; gave up after {attempt_number} attempts")
    jitter = settings.WEBHOOK_RETRY_JITTER
    delay = schedule[attempt_number - 1] * random.uniform(1 - jitter, 1 + jitter)
    if result.retry_after is not None:
        delay = max(delay, min(result.retry_after, settings.WEBHOOK_RETRY_AFTER_MAX_SEC))
    return AttemptOutcome.RETRY, max(0.0, delay), error


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
        result = _HTTPResult(error="Not sent: the endpoint was disabled after HTTP 410.")
        outcome, retry_in, error = AttemptOutcome.DISABLED, None, result.error
    elif number > max_attempts():
        # Earlier claims never recorded an outcome (the worker died mid-attempt): stop the loop.
        result = _HTTPResult(error=f"Gave up: {number - 1} attempts were interrupted or made.")
        outcome, retry_in, error = AttemptOutcome.FAILED, None, result.error
    else:
        try:
            secrets = _signing_secrets(user_id=delivery.owner_id, now=started_at)
            result = _http_attempt(delivery=delivery, secrets=secrets)
            outcome, retry_in, error = _decide(result, attempt_number=number)
        except SecretUnreadable as exc:
            result = _HTTPResult(error=str(exc))
            outcome, retry_in, error = AttemptOutcome.FAILED, None, result.error
        except Exception as exc:
            # A bug, not the receiver's doing: record it on the row (never lose the delivery silently),
            # log it loudly, and do not retry in a loop.
            logger.exception("webhook %s attempt crashed", delivery.event_id)
            result = _HTTPResult(error=_cap(f"Internal error: {type(exc).__name__}"))
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
    result: _HTTPResult,
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
            error=_cap(error),
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
            "last_error": _cap(error),
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


# --- Redelivery and sweep ------------------------------------------------------------------------


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
        transaction.on_commit(lambda: _enqueue_send(delivery_id=delivery_id, series=series))
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
        _enqueue_send(delivery_id=delivery_id, series=series)
    return len(rows)
