"""Webhook reads: the delivery state shown on a job, the secret's metadata."""

from __future__ import annotations

from typing import Any

from core.timestamps import iso_z

from .models import Delivery, WebhookSecret

# The job view shows the latest attempts only; the admin shows them all.
ATTEMPTS_SHOWN = 20


def delivery_state_for_job(job: Any) -> dict[str, Any] | None:
    """The webhook delivery state of `job`, for `GET /api/agent/jobs/<id>`; None when it has no delivery.

    Keys: webhook_id, event_type, url, status (pending|succeeded|failed|disabled), attempts (of the
    current series), series, last_status_code, last_error, next_attempt_at, created_at, finished_at, and
    attempt_log: the latest `ATTEMPTS_SHOWN` attempts, oldest first, each with series, number, at,
    status_code, duration_ms, outcome, error and a short response excerpt. Never a secret or signature.
    """
    delivery = Delivery.objects.filter(job=job).order_by("-created_at").first()
    if delivery is None:
        return None
    attempts = list(delivery.attempt_log.order_by("-series", "-number")[:ATTEMPTS_SHOWN])
    attempts.reverse()
    return {
        "webhook_id": delivery.event_id,
        "event_type": delivery.event_type,
        "url": delivery.url,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "series": delivery.series,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "next_attempt_at": iso_z(delivery.next_attempt_at),
        "created_at": iso_z(delivery.created_at),
        "finished_at": iso_z(delivery.finished_at),
        "attempt_log": [
            {
                "series": attempt.series,
                "number": attempt.number,
                "at": iso_z(attempt.started_at),
                "status_code": attempt.status_code,
                "duration_ms": round(attempt.duration_ms, 1),
                "outcome": attempt.outcome,
                "error": attempt.error,
                "response_excerpt": attempt.response_excerpt,
            }
            for attempt in attempts
        ],
    }


def secret_metadata(*, user) -> dict[str, Any] | None:
    """What may be shown about the user's signing secret (never the secret); None when there is none."""
    row = WebhookSecret.objects.filter(user=user).first()
    if row is None:
        return None
    return {
        "prefix": f"{row.prefix}…",
        "created_at": row.created_at,
        "rotated_at": row.rotated_at,
        "previous_prefix": f"{row.previous_prefix}…" if row.previous_prefix else None,
        "previous_valid_until": row.previous_valid_until,
    }
