"""admin: deliveries with inline attempts render; secrets show metadata only."""

from __future__ import annotations

import pytest
from django.db import transaction

from apps.agent.services.events import job_event_enqueue
from apps.agent.tests.factories import job_make
from apps.webhooks.services import delivery_send, secret_create_or_rotate
from apps.webhooks.testing import Reply

pytestmark = pytest.mark.django_db


def test_delivery_admin_shows_attempts_and_secret_admin_hides_the_secret(
    admin_client, user, receiver, loopback_allowed
):
    secret, row = secret_create_or_rotate(user=user)
    receiver.program(Reply(503, body=b"maintenance"))
    with transaction.atomic():
        delivery = job_event_enqueue(job=job_make(user, webhook_url=receiver.url))
    delivery_send(delivery_id=delivery.id)

    listing = admin_client.get("/admin/webhooks/delivery/")
    detail = admin_client.get(f"/admin/webhooks/delivery/{delivery.pk}/change/")
    secret_page = admin_client.get(f"/admin/webhooks/webhooksecret/{row.pk}/change/")

    assert listing.status_code == detail.status_code == secret_page.status_code == 200
    assert delivery.event_id in listing.content.decode()
    assert "maintenance" in detail.content.decode()
    page = secret_page.content.decode()
    assert row.prefix in page
    assert secret[6:] not in page
    assert row.secret_encrypted not in page
