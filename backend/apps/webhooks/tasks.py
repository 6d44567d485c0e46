"""Celery tasks of the webhooks app: thin, ids only; the services decide, the task schedules."""

from __future__ import annotations

from celery import shared_task

from .services import deliveries_sweep, delivery_send, max_attempts


@shared_task(bind=True, name="agent.delivery_send", acks_late=True, ignore_result=True, max_retries=None)
def delivery_send_task(self, delivery_id: int, series: int | None = None) -> str:
    """One attempt of delivery `delivery_id` (of attempt series `series`); schedules the next if needed.

    Routed to the "webhooks" queue so slow receivers never hold the agent workers. The attempt budget is
    stored on the row (the service gives up after `max_attempts()`); the retry cap here is a second
    guard against a loop, not the policy.
    """
    outcome = delivery_send(delivery_id=delivery_id, series=series)
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in, max_retries=max_attempts())
    return outcome.status


@shared_task(name="agent.deliveries_sweep", ignore_result=True)
def deliveries_sweep_task() -> int:
    """Re-enqueue overdue pending deliveries (lost messages). Scheduled by beat: "webhooks-sweep"."""
    return deliveries_sweep()
