"""Celery tasks of the webhooks app: thin, ids only; the service performs an attempt, the task schedules."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from apps.core import publish

from .services import deliveries_sweep, delivery_send


@shared_task(name=publish.DELIVERY_SEND, acks_late=True, ignore_result=True)
def delivery_send_task(delivery_id: int, series: int | None = None) -> str:
    """One attempt of delivery `delivery_id` (of attempt series `series`); schedules the next one.

    Routed to the "webhooks" queue so slow receivers never hold the agent workers. The attempt budget
    is stored on the row: the service stops retrying after `max_attempts()`. Waits up to
    WEBHOOK_COUNTDOWN_MAX_SEC are scheduled here with a countdown; longer ones are left to the sweep,
    because Redis re-delivers a message held longer than its visibility timeout (a duplicate that the
    service's claim would skip, but that workers hold in memory meanwhile).
    """
    outcome = delivery_send(delivery_id=delivery_id, series=series)
    if outcome.retry_in is None:
        return outcome.status
    if outcome.retry_in > settings.WEBHOOK_COUNTDOWN_MAX_SEC:
        return "retry_by_sweep"
    # A new message rather than self.retry(): the same path in a worker and in eager tests, and the
    # budget lives on the row, not in the message's retry counter.
    delivery_send_task.apply_async(
        args=[delivery_id], kwargs={"series": outcome.series}, countdown=outcome.retry_in
    )
    return outcome.status


@shared_task(name=publish.DELIVERIES_SWEEP, ignore_result=True)
def deliveries_sweep_task() -> int:
    """Enqueue pending deliveries that are due but have no message (long waits, lost messages)."""
    return deliveries_sweep()
