"""tasks: the send task runs on the "webhooks" queue, retries from the service's decision, and stops."""

from __future__ import annotations

import pytest
from django.db import transaction
from standardwebhooks import Webhook

from apps.agent.services.events import job_event_enqueue
from apps.agent.tests.factories import job_make
from apps.webhooks.models import Delivery, DeliveryStatus
from apps.webhooks.services import secret_create_or_rotate
from apps.webhooks.tasks import deliveries_sweep_task, delivery_send_task
from apps.webhooks.testing import Reply

pytestmark = pytest.mark.django_db


@pytest.fixture
def zero_backoff(settings):
    # Eager mode ignores countdowns; a zero schedule keeps each retry due when it runs.
    settings.WEBHOOK_RETRY_SCHEDULE = [0.0, 0.0]


def test_send_task_is_routed_to_the_webhooks_queue():
    from config.celery_app import app

    assert app.amqp.router.route({}, "agent.delivery_send")["queue"].name == "webhooks"
    assert app.amqp.router.route({}, "agent.deliveries_sweep")["queue"].name == "webhooks"


def test_terminal_event_is_sent_after_commit_and_retried_by_the_task(
    user, receiver, loopback_allowed, zero_backoff, django_capture_on_commit_callbacks
):
    # Given
    secret, _ = secret_create_or_rotate(user=user)
    job = job_make(user, webhook_url=receiver.url)
    receiver.program(Reply(500), Reply(200))

    # When: the jobs app records the outcome; the send task runs (eagerly) after commit
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        delivery = job_event_enqueue(job=job)
        assert receiver.requests == []  # nothing is sent inside the transaction

    # Then
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert delivery.attempts == 2
    requests = receiver.wait_for(2)
    assert [r.headers["webhook-id"] for r in requests] == [delivery.event_id] * 2
    Webhook(secret).verify(requests[1].body, requests[1].headers)


def test_task_stops_at_the_attempt_budget(user, receiver, loopback_allowed, zero_backoff):
    receiver.default = Reply(503)
    job = job_make(user, webhook_url=receiver.url)
    with transaction.atomic():
        delivery = job_event_enqueue(job=job)

    delivery_send_task.apply(args=[delivery.id], kwargs={"series": 1})

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempts == 3
    assert len(receiver.requests) == 3


def test_sweep_task_sends_an_overdue_delivery(user, receiver, loopback_allowed, settings):
    settings.WEBHOOK_SWEEP_OVERDUE_SEC = 1
    job = job_make(user, webhook_url=receiver.url)
    with transaction.atomic():
        delivery = job_event_enqueue(job=job)
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=delivery.created_at.replace(year=2000))

    assert deliveries_sweep_task.apply().get() == 1

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED
