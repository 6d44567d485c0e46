"""The retry policy of deliveries: which outcome an attempt's result is, and when to try again."""

from __future__ import annotations

import random

from django.conf import settings

from apps.webhooks.models import AttemptOutcome
from apps.webhooks.services.http_attempt import HTTPResult, cap


def max_attempts() -> int:
    """Attempts of one series: the first one plus one per entry of WEBHOOK_RETRY_SCHEDULE."""
    return len(settings.WEBHOOK_RETRY_SCHEDULE) + 1


def decide(result: HTTPResult, *, attempt_number: int) -> tuple[str, float | None, str]:
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
        return AttemptOutcome.FAILED, None, cap(f"{error}; gave up after {attempt_number} attempts")
    jitter = settings.WEBHOOK_RETRY_JITTER
    delay = schedule[attempt_number - 1] * random.uniform(1 - jitter, 1 + jitter)
    if result.retry_after is not None:
        delay = max(delay, min(result.retry_after, settings.WEBHOOK_RETRY_AFTER_MAX_SEC))
    return AttemptOutcome.RETRY, max(0.0, delay), error
