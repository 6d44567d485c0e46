"""Faults 5, 6, 7: LLM provider faults, a missing or corrupt vector store, a webhook receiver that is down."""

from __future__ import annotations

import shutil
import time

import pytest
from standardwebhooks import Webhook

from tests.e2e.harness import free_port, wait_for
from tests.faults.conftest import submit, wait_terminal

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

#: LLM_TIMEOUT_SEC and the job deadline for these scenarios: a hang must end within the deadline.
LLM_TIMEOUT = "2"
JOB_TIMEOUT = 5.0


@pytest.mark.parametrize(
    ("fault", "options", "degraded", "max_calls", "code"),
    [
        ("429", {"retry_after": 0.5}, True, 2, "rate_limited"),
        ("500", {}, True, 2, "provider_error"),
        ("hang", {"hang_sec": 30}, True, 2, "timeout"),
        ("slow_drip", {"drip_interval_ms": 400}, True, 2, "timeout"),
        ("malformed", {}, True, 2, "bad_response"),
        ("none", {"usage": False}, False, 1, None),
    ],
)
def test_llm_fault_ends_within_deadline_and_retry_budget(
    stack, client, settings, fault, options, degraded, max_calls, code
):
    """5. Each provider fault ends the job `succeeded` (degraded when the answer is missing) within the
    deadline, and the upstream calls counted at the test server stay within 1 + LLM_MAX_RETRIES."""
    settings.AGENT_JOB_TIMEOUT_SEC = JOB_TIMEOUT
    stack.llm.control(fault=fault, **options)
    stack.start_worker(env={"LLM_TIMEOUT_SEC": LLM_TIMEOUT, "LLM_MAX_RETRIES": "1"})

    job_id = submit(client)
    job = wait_terminal([job_id], timeout=30)[job_id]

    assert job.status == "succeeded", job.error
    assert job.degraded is degraded
    assert (job.finished_at - job.started_at).total_seconds() <= JOB_TIMEOUT + 1.0
    llm = job.trace_steps.get(name="llm")
    assert (llm.error or {}).get("code") == code
    calls = len(stack.llm.requests("/v1/chat/completions"))
    assert 1 <= calls <= max_calls
    assert len(job.result["results"]) == 3
    if fault == "none":  # no usage from the provider: tokens are estimated offline, and flagged
        assert job.usage_estimated is True and job.prompt_tokens > 0


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_broken_vector_store_degrades_to_exact_search_and_health_says_so(
    stack, client, settings, tmp_path, damage
):
    """6. Jobs end degraded via exact search over the catalogue; /api/health names the vector store."""
    broken = tmp_path / "vector_db"
    if damage == "corrupt":
        shutil.copytree(stack.vector.dir, broken)
        for sqlite in broken.rglob("*.sqlite3"):
            sqlite.write_bytes(b"this is not a database" * 100)
    else:
        broken.mkdir()
    env = {"VECTOR_DB_DIR": str(broken), "VECTOR_DB_MANIFEST": str(broken / "manifest.json")}
    settings.VECTOR = type(stack.vector)(
        **{**stack.vector.__dict__, "dir": broken, "manifest_path": broken / "manifest.json"}
    )
    stack.start_worker(env=env)

    job_id = submit(client, "Cien años de soledad Macondo")
    job = wait_terminal([job_id], timeout=30)[job_id]

    assert job.status == "succeeded" and job.degraded is True
    steps = [s.name for s in job.trace_steps.order_by("position")]
    assert steps[:2] == ["retrieve", "exact_search"]
    assert job.trace_steps.get(name="retrieve").error["code"] == "vector_store_unavailable"
    assert job.result["results"][0]["title"] == "Cien años de soledad"

    health = client.get("/api/health")
    assert health.status_code == 503
    assert "vector_store" in health.json()["failing"]


def test_webhook_receiver_down_then_up_gets_the_event_once(stack, client, settings):
    """7. Connection refused for a while, then a receiver: the event arrives once and verifies."""
    from django.contrib.auth import get_user_model

    from apps.webhooks.services import secret_create_or_rotate
    from apps.webhooks.testing import WebhookReceiver

    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    user = get_user_model().objects.get(username__startswith="e2e-")
    secret, _ = secret_create_or_rotate(user=user)
    port = free_port()
    stack.start_worker(
        env={
            "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            "WEBHOOK_RETRY_SCHEDULE": "1s,1s,1s,2s,2s",
            "WEBHOOK_RETRY_JITTER": "0",
        }
    )

    job_id = submit(client, webhook_url=f"http://127.0.0.1:{port}/hook")
    wait_terminal([job_id], timeout=30)
    from apps.webhooks.models import Delivery, DeliveryAttempt

    refused = DeliveryAttempt.objects.filter(delivery__job_id=job_id, status_code__isnull=True)
    wait_for(lambda: refused.count() >= 2, timeout=15, message="two refused attempts")
    with WebhookReceiver(port=port) as receiver:
        received = receiver.wait_for(1, timeout=15)
        time.sleep(2.5)  # a duplicate would come within the next retry delay
        received = list(receiver.requests)

    assert len(received) == 1
    event = Webhook(secret).verify(received[0].body, received[0].headers)
    assert event["type"] == "agent.job.succeeded" and event["data"]["job_id"] == job_id
    delivery = Delivery.objects.get(job_id=job_id)
    assert delivery.status == "succeeded"
    attempts = list(delivery.attempt_log.order_by("id"))
    assert len(attempts) == delivery.attempts >= 3
    assert [a.status_code for a in attempts[:-1]] == [None] * (len(attempts) - 1)  # connection refused
    assert attempts[-1].status_code == 200
