"""apis: the secret endpoints, redelivery, the 400 at job submission, and the OpenAPI schema."""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from apps.agent.models import JobStatus
from apps.agent.tests.factories import job_make
from apps.webhooks.models import Delivery, DeliveryStatus

from .hostile import DNS_TABLE, hostile_urls

pytestmark = pytest.mark.django_db

SECRET_URL = "/api/webhooks/secret"


def redeliver_url(job_id) -> str:
    return f"/api/agent/jobs/{job_id}/redeliver"


def test_url_names():
    assert reverse("webhooks:secret") == SECRET_URL
    assert reverse("agent-job-redeliver", args=["7d1f9b4e-0000-4000-8000-000000000000"]) == redeliver_url(
        "7d1f9b4e-0000-4000-8000-000000000000"
    )


def test_secret_is_shown_once_and_rotation_keeps_the_previous_one_valid(api):
    # Given no secret
    missing = api.get(SECRET_URL)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "no_webhook_secret"

    # When created
    created = api.post(SECRET_URL)
    assert created.status_code == 201
    assert created["Cache-Control"] == "no-store"
    first = created.json()
    assert first["secret"].startswith("whsec_")
    assert first["prefix"] == first["secret"][:10] + "…"
    assert first["previous_valid_until"] is None

    # When rotated
    rotated = api.post(SECRET_URL).json()
    assert rotated["secret"] != first["secret"]
    assert rotated["previous_valid_until"] is not None

    # Then the metadata never shows a secret
    metadata = api.get(SECRET_URL)
    assert metadata.status_code == 200
    body = metadata.json()
    assert body["prefix"] == rotated["prefix"]
    assert body["previous_prefix"] == first["prefix"]
    assert body["previous_valid_until"] == rotated["previous_valid_until"]
    assert "secret" not in body
    for secret in (first["secret"], rotated["secret"]):
        assert secret[6:] not in metadata.content.decode()


def test_secret_endpoints_need_authentication():
    response = APIClient().post(SECRET_URL)
    assert response.status_code in (401, 403)
    assert "error" in response.json()


def test_redeliver_by_the_owner_returns_202_with_the_delivery_state(api, user, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    job = job_make(user, webhook_url="http://127.0.0.1:9/hook")

    # on_commit callbacks do not run inside the test transaction: nothing is sent here
    response = api.post(redeliver_url(job.id))

    assert response.status_code == 202
    body = response.json()
    delivery = Delivery.objects.get(job=job)
    assert body["webhook_id"] == delivery.event_id
    assert (body["status"], body["attempts"], body["series"]) == (DeliveryStatus.PENDING, 0, 1)
    assert body["attempt_log"] == []

    again = api.post(redeliver_url(job.id)).json()
    assert (again["webhook_id"], again["series"]) == (delivery.event_id, 2)


def test_redeliver_of_another_users_job_is_404_in_the_error_shape(other_api, user):
    job = job_make(user, webhook_url="https://hooks.example.com/x")

    response = other_api.post(redeliver_url(job.id))

    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "No such job.", "details": None}}
    assert Delivery.objects.count() == 0


@pytest.mark.parametrize(
    ("status", "webhook_url", "code"),
    [
        (JobStatus.RUNNING, "https://hooks.example.com/x", "job_not_terminal"),
        (JobStatus.QUEUED, "https://hooks.example.com/x", "job_not_terminal"),
        (JobStatus.SUCCEEDED, "", "no_webhook_url"),
    ],
)
def test_redeliver_conflicts(api, user, status, webhook_url, code):
    job = job_make(user, status=status, webhook_url=webhook_url)

    response = api.post(redeliver_url(job.id))

    assert response.status_code == 409
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize("index", range(len(hostile_urls(1))))
def test_job_submission_refuses_a_hostile_webhook_url_with_400(api, dns, index):
    dns.table.update(DNS_TABLE)
    url, _reason = hostile_urls(8080)[index]

    response = api.post("/api/agent/jobs", {"query": "books about whales", "webhook_url": url}, format="json")

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "webhook_url_rejected"
    assert error["message"].startswith("webhook_url is not allowed:")


def test_openapi_schema_documents_the_webhook_endpoints():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)

    secret = schema["paths"][SECRET_URL]
    assert set(secret["get"]["responses"]) == {"200", "401", "404"}
    assert set(secret["post"]["responses"]) == {"201", "401"}
    redeliver = schema["paths"]["/api/agent/jobs/{job_id}/redeliver"]["post"]
    assert set(redeliver["responses"]) == {"202", "401", "404", "409"}
    assert redeliver["operationId"] == "agent_job_redeliver"
    assert "DeliveryState" in schema["components"]["schemas"]
