"""One HTTP attempt of a delivery: check the URL again, sign, POST once to the checked address, read a
capped response. No database access; `retry_policy.decide` judges the result."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from django.conf import settings

from apps.webhooks.models import Delivery
from apps.webhooks.services.signing import sign
from apps.webhooks.ssrf import WebhookURLRejected, validate_webhook_url
from apps.webhooks.transport import pinned_client
from core.retry_after import retry_after_seconds

ERROR_MAX_CHARS = 300


@dataclass
class HTTPResult:
    status_code: int | None = None
    error: str = ""
    transient: bool = False  # a network failure, timeout or DNS failure: worth another try
    retry_after: float | None = None
    excerpt: str = ""
    remote_address: str = ""


def cap(text: str, limit: int = ERROR_MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def epoch_seconds() -> int:
    """Now, in whole seconds: the `webhook-timestamp` resolution (a seam for tests)."""
    return int(time.time())


def http_attempt(*, delivery: Delivery, secrets: list[str]) -> HTTPResult:
    """Validate the URL, sign, POST once to the checked address, and read a capped response. No DB access."""
    try:
        target = validate_webhook_url(delivery.url, allowed_hosts=settings.WEBHOOK_ALLOWED_HOSTS)
    except WebhookURLRejected as exc:
        return HTTPResult(error=cap(f"URL refused ({exc.reason}): {exc.message}"), transient=exc.transient)
    body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False)
    # Fresh per attempt: receivers reject timestamps outside their tolerance (5 minutes by default).
    timestamp = datetime.fromtimestamp(epoch_seconds(), tz=UTC)
    headers = {
        "content-type": "application/json",
        # Plain bodies only: the excerpt is read raw and capped, so no decompression of a receiver's bomb.
        "accept-encoding": "identity",
        "user-agent": settings.WEBHOOK_USER_AGENT,
        "webhook-id": delivery.event_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": sign(secrets=secrets, msg_id=delivery.event_id, timestamp=timestamp, body=body),
    }
    timeout = httpx.Timeout(
        connect=settings.WEBHOOK_CONNECT_TIMEOUT_SEC,
        read=settings.WEBHOOK_READ_TIMEOUT_SEC,
        write=settings.WEBHOOK_READ_TIMEOUT_SEC,
        pool=settings.WEBHOOK_CONNECT_TIMEOUT_SEC,
    )
    deadline = time.monotonic() + settings.WEBHOOK_ATTEMPT_DEADLINE_SEC
    result = HTTPResult(remote_address=target.address)
    try:
        with (
            pinned_client(target=target, timeout=timeout, deadline=deadline) as client,
            client.stream("POST", target.url, content=body.encode("utf-8"), headers=headers) as response,
        ):
            result.status_code = response.status_code
            result.retry_after = retry_after_seconds(response.headers)
            result.excerpt = read_excerpt(response)
    except httpx.TimeoutException as exc:
        if result.status_code is None:
            result.error, result.transient = f"timeout ({type(exc).__name__})", True
    except httpx.HTTPError as exc:
        # Connection refused/reset, protocol errors: the request may not have arrived; try again.
        if result.status_code is None:
            result.error, result.transient = cap(f"{type(exc).__name__}: {exc}"), True
    return result


def read_excerpt(response: httpx.Response) -> str:
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
    # Without NUL characters, which PostgreSQL cannot store in text: a receiver answering one had its
    # success lost with the attempt's row (a DataError), and the event was sent again and again.
    return text.replace("\x00", "")[: settings.WEBHOOK_RESPONSE_EXCERPT_CHARS]
