"""services: signing, one attempt at a time, retry decisions, 410 blocks, SSRF at send time, redelivery."""

from __future__ import annotations

import socket
import time
from datetime import timedelta

import httpcore
import pytest
from django.db import transaction
from django.utils import timezone
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from apps.agent import selectors
from apps.agent.models import JobStatus
from apps.agent.services.events import batch_event_enqueue, job_event_enqueue, job_event_redeliver
from apps.agent.tests.factories import RESULT, batch_make, job_make
from apps.core.http_errors import exception_handler
from apps.webhooks import services
from apps.webhooks.models import (
    AttemptOutcome,
    Delivery,
    DeliveryStatus,
    EventType,
    WebhookEndpointBlock,
    WebhookSecret,
)
from apps.webhooks.selectors import delivery_state_for_job
from apps.webhooks.services import (
    deliveries_sweep,
    delivery_send,
    event_enqueue,
    http_attempt,
    secret_create_or_rotate,
    sending,
    webhook_url_validate,
)
from apps.webhooks.testing import Reply, redirect
from core.errors import Conflict, NotFound, ValidationFailed
from core.retry_after import retry_after_seconds

from .conftest import PUBLIC_IP
from .hostile import DNS_TABLE, hostile_urls

pytestmark = pytest.mark.django_db


def enqueue(job) -> Delivery:
    """The job's event, recorded inside a transaction without running the after-commit send (tests drive
    it)."""
    with transaction.atomic():
        delivery = job_event_enqueue(job=job)
    assert delivery is not None
    return delivery


def send_until_done(delivery: Delivery, *, limit: int = 10) -> list[services.SendOutcome]:
    """Drive delivery_send like the task does: again after `retry_in`, until it stops retrying."""
    outcomes = []
    for _ in range(limit):
        outcome = delivery_send(delivery_id=delivery.id)
        outcomes.append(outcome)
        if outcome.retry_in is None:
            break
        time.sleep(outcome.retry_in)
    return outcomes


@pytest.fixture
def secret(user) -> str:
    plaintext, _ = secret_create_or_rotate(user=user)
    return plaintext


@pytest.fixture
def job(user, receiver, loopback_allowed):
    return job_make(user, webhook_url=receiver.url)


@pytest.fixture
def fresh_timestamps(monkeypatch):
    """A distinct `webhook-timestamp` per attempt, within the receiver's 5-minute tolerance."""
    ticks = iter(range(int(time.time()) - 100, int(time.time()) + 100, 7))
    monkeypatch.setattr(http_attempt, "epoch_seconds", lambda: next(ticks))


# --- signing and payload -------------------------------------------------------------------------


def test_delivery_is_signed_and_verifies_with_standardwebhooks(secret, job, receiver):
    # Given
    delivery = enqueue(job)

    # When
    outcome = delivery_send(delivery_id=delivery.id)

    # Then
    assert outcome.status == "succeeded"
    (request,) = receiver.requests
    payload = Webhook(secret).verify(request.body, request.headers)
    assert request.headers["webhook-id"] == delivery.event_id
    assert delivery.event_id.startswith("msg_")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("Librarian-Webhooks/")
    assert payload["type"] == "agent.job.succeeded"
    data = payload["data"]
    assert data["job_id"] == str(job.id)
    assert data["status"] == "succeeded"
    assert data["degraded"] is False
    assert data["message"] == "Try Moby-Dick."
    assert data["results"] == RESULT["results"] and data["results"][0]["title"] == "Moby-Dick"
    assert data["actions"] == [{"type": "view_book", "label": "Moby-Dick", "book_id": "1"}]
    assert data["error"] is None
    assert data["batch_id"] is None
    assert data["links"] == {"job": f"/api/agent/jobs/{job.id}"}
    assert b"trace" not in request.body
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert delivery.attempts == 1
    assert delivery.last_status_code == 200
    assert delivery.finished_at is not None
    (attempt,) = delivery.attempt_log.all()
    assert (attempt.status_code, attempt.outcome, attempt.remote_address) == (200, "succeeded", "127.0.0.1")
    assert attempt.response_excerpt == "ok"


def test_failed_job_payload_carries_the_error(user, receiver, loopback_allowed, secret):
    job = job_make(user, status=JobStatus.FAILED, webhook_url=receiver.url)
    delivery = enqueue(job)

    delivery_send(delivery_id=delivery.id)

    payload = Webhook(secret).verify(receiver.requests[0].body, receiver.requests[0].headers)
    assert payload["type"] == "agent.job.failed"
    assert payload["data"]["error"] == {"code": "llm_error", "message": "boom"}
    assert payload["data"]["message"] is None


def test_a_user_without_a_secret_gets_one_and_deliveries_are_still_signed(user, job, receiver):
    delivery = enqueue(job)

    delivery_send(delivery_id=delivery.id)

    assert WebhookSecret.objects.filter(user=user).exists()
    assert receiver.requests[0].headers["webhook-signature"].startswith("v1,")


def test_secret_is_encrypted_at_rest(user):
    plaintext, row = secret_create_or_rotate(user=user)

    assert plaintext.startswith("whsec_")
    assert plaintext not in row.secret_encrypted
    assert plaintext[6:] not in row.secret_encrypted
    assert row.prefix == plaintext[:10]


def test_rotation_signs_with_both_secrets_during_the_grace_period(user, job, receiver):
    # Given: a secret, rotated
    old, _ = secret_create_or_rotate(user=user)
    new, row = secret_create_or_rotate(user=user)
    assert row.previous_valid_until > timezone.now() + timedelta(minutes=59)
    delivery = enqueue(job)

    # When
    delivery_send(delivery_id=delivery.id)

    # Then: two signatures; a receiver holding either secret verifies
    request = receiver.requests[0]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert Webhook(old).verify(request.body, request.headers)["data"]["job_id"] == str(job.id)
    assert Webhook(new).verify(request.body, request.headers)["data"]["job_id"] == str(job.id)

    # When the grace period is over
    WebhookSecret.objects.filter(user=user).update(previous_valid_until=timezone.now() - timedelta(seconds=1))
    job_event_redeliver(job=job)
    delivery_send(delivery_id=delivery.id)

    # Then: only the new secret signs
    request = receiver.requests[1]
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(request.body, request.headers)


# --- retries -------------------------------------------------------------------------------------


def test_retries_on_5xx_then_succeeds_with_the_same_id_and_fresh_signatures(
    secret, job, receiver, fresh_timestamps
):
    receiver.program(Reply(500, body=b"oops"), Reply(503), Reply(200))
    delivery = enqueue(job)

    outcomes = send_until_done(delivery)

    assert [o.status for o in outcomes] == ["retry", "retry", "succeeded"]
    assert [o.status_code for o in outcomes] == [500, 503, 200]
    requests = receiver.requests
    assert len(requests) == 3
    assert {r.headers["webhook-id"] for r in requests} == {delivery.event_id}
    assert len({r.headers["webhook-timestamp"] for r in requests}) == 3
    assert len({r.headers["webhook-signature"] for r in requests}) == 3
    for request in requests:
        Webhook(secret).verify(request.body, request.headers)
    attempts = list(delivery.attempt_log.values_list("number", "status_code", "outcome", "response_excerpt"))
    assert attempts == [(1, 500, "retry", "oops"), (2, 503, "retry", "ok"), (3, 200, "succeeded", "ok")]


def test_a_receivers_answer_with_nul_characters_is_recorded_without_them(secret, job, receiver):
    """PostgreSQL cannot store NUL in text: the attempt's row failed, and the 2xx was sent again later."""
    receiver.program(Reply(200, body=b"ok\x00thanks"))
    delivery = enqueue(job)

    outcome = delivery_send(delivery_id=delivery.id)

    assert outcome.status == "succeeded" and len(receiver.requests) == 1
    assert list(delivery.attempt_log.values_list("outcome", "response_excerpt")) == [
        ("succeeded", "okthanks")
    ]


def test_retries_on_timeout_then_succeeds(secret, job, receiver):
    receiver.program(Reply(200, delay=1.0), Reply(200))
    delivery = enqueue(job)

    outcomes = send_until_done(delivery)

    assert [o.status for o in outcomes] == ["retry", "succeeded"]
    first, second = delivery.attempt_log.all()
    assert first.status_code is None
    assert first.error.startswith("timeout")
    assert first.duration_ms < 1000
    assert second.status_code == 200
    ids = {r.headers["webhook-id"] for r in receiver.wait_for(2)}
    assert ids == {delivery.event_id}


def test_connection_refused_is_retried(user, loopback_allowed, secret):
    with socket.socket() as probe:  # a port with no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    job = job_make(user, webhook_url=f"http://127.0.0.1:{port}/hook")
    delivery = enqueue(job)

    outcome = delivery_send(delivery_id=delivery.id)

    assert outcome.status == "retry"
    assert "ConnectError" in outcome.error


def test_429_honours_retry_after(secret, job, receiver):
    receiver.program(Reply(429, headers={"Retry-After": "7"}))
    delivery = enqueue(job)

    outcome = delivery_send(delivery_id=delivery.id)

    assert outcome.status == "retry"
    assert outcome.retry_in == 7.0
    delivery.refresh_from_db()
    assert timedelta(seconds=6) < delivery.next_attempt_at - timezone.now() <= timedelta(seconds=7)
    # Not due yet: a duplicate task message does not send ahead of the receiver's wish.
    assert delivery_send(delivery_id=delivery.id).status == "skipped"
    assert len(receiver.requests) == 1


def test_retry_after_is_capped_and_accepts_http_dates(secret, job, receiver, settings):
    settings.WEBHOOK_RETRY_AFTER_MAX_SEC = 30.0
    receiver.program(Reply(429, headers={"Retry-After": "86400"}))
    delivery = enqueue(job)
    assert delivery_send(delivery_id=delivery.id).retry_in == 30.0

    later = timezone.now() + timedelta(seconds=20)
    assert 18 <= retry_after_seconds({"retry-after": later.strftime("%a, %d %b %Y %H:%M:%S GMT")}) <= 20
    assert retry_after_seconds({"retry-after": "soon"}) is None


def test_backoff_follows_the_schedule_with_bounded_jitter(secret, job, receiver, settings):
    settings.WEBHOOK_RETRY_SCHEDULE = [10.0, 100.0]
    settings.WEBHOOK_RETRY_JITTER = 0.2
    receiver.program(Reply(500))
    delivery = enqueue(job)

    outcome = delivery_send(delivery_id=delivery.id)

    assert 8.0 <= outcome.retry_in <= 12.0


def test_gives_up_after_the_last_scheduled_attempt(secret, job, receiver):
    receiver.default = Reply(500)
    delivery = enqueue(job)

    outcomes = send_until_done(delivery)

    assert [o.status for o in outcomes] == ["retry", "retry", "retry", "failed"]
    assert services.max_attempts() == 4
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.last_error == "HTTP 500; gave up after 4 attempts"
    assert delivery.next_attempt_at is None
    assert delivery_send(delivery_id=delivery.id).status == "skipped"
    assert len(receiver.requests) == 4


@pytest.mark.parametrize("code", [400, 401, 403, 404, 422])
def test_other_4xx_are_permanent_failures(secret, job, receiver, code):
    receiver.program(Reply(code))
    delivery = enqueue(job)

    outcomes = send_until_done(delivery)

    assert [o.status for o in outcomes] == ["failed"]
    assert outcomes[0].error == f"HTTP {code}"
    assert len(receiver.requests) == 1


def test_redirects_are_not_followed(secret, job, receiver):
    receiver.program(redirect(f"{receiver.base_url}/elsewhere", status=307))
    delivery = enqueue(job)

    outcomes = send_until_done(delivery)

    assert [o.status for o in outcomes] == ["failed"]
    assert "redirects are not followed" in outcomes[0].error
    assert receiver.hits("/elsewhere") == []
    assert len(receiver.requests) == 1


def test_410_fails_and_disables_the_endpoint_for_later_events(user, secret, receiver, loopback_allowed):
    # Given: two jobs with the same URL, one delivery pending for a later retry
    first, waiting = job_make(user, webhook_url=receiver.url), job_make(user, webhook_url=receiver.url)
    d_first, d_waiting = enqueue(first), enqueue(waiting)
    Delivery.objects.filter(pk=d_waiting.pk).update(next_attempt_at=timezone.now() + timedelta(hours=1))
    receiver.program(Reply(410))

    # When
    outcome = delivery_send(delivery_id=d_first.id)

    # Then: the 410 delivery failed, the URL is blocked, the waiting delivery is disabled
    assert outcome.status == "failed"
    d_first.refresh_from_db()
    assert d_first.status == DeliveryStatus.FAILED
    assert d_first.attempt_log.get().outcome == AttemptOutcome.DISABLED
    assert WebhookEndpointBlock.objects.filter(owner=user, url=receiver.url).exists()
    d_waiting.refresh_from_db()
    assert d_waiting.status == DeliveryStatus.DISABLED

    # And a later event is recorded as disabled and never sent
    later = enqueue(job_make(user, webhook_url=receiver.url))
    assert later.status == DeliveryStatus.DISABLED
    assert delivery_send(delivery_id=later.id).status == "skipped"
    assert len(receiver.requests) == 1


def test_response_body_is_read_up_to_a_cap_and_kept_as_a_short_excerpt(secret, job, receiver):
    receiver.program(Reply(500, body=b"x" * 100_000))
    delivery = enqueue(job)

    delivery_send(delivery_id=delivery.id)

    assert delivery.attempt_log.get().response_excerpt == "x" * 64


# --- SSRF at send time ---------------------------------------------------------------------------


@pytest.fixture
def no_connect(monkeypatch):
    """Records every TCP connection the sender asks for, and refuses it."""
    seen: list[tuple[str, int]] = []

    def refuse(self, host, port, *args, **kwargs):
        seen.append((host, port))
        raise httpcore.ConnectError("connection refused by the test")

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", refuse)
    return seen


@pytest.mark.parametrize("index", range(len(hostile_urls(1))))
def test_hostile_url_is_never_contacted_at_send_time(user, secret, receiver, dns, no_connect, index):
    # Given: a delivery whose URL slipped past submission (e.g. DNS changed since)
    dns.table.update(DNS_TABLE)
    url, reason = hostile_urls(receiver.port)[index]
    delivery = Delivery.objects.create(
        event_type=EventType.JOB_SUCCEEDED, owner=user, job=job_make(user), url=url, payload={"type": "x"}
    )

    # When
    outcome = delivery_send(delivery_id=delivery.id)

    # Then: refused before any connection; permanent unless DNS simply did not answer
    assert outcome.status == ("retry" if reason == "dns_error" else "failed")
    assert f"URL refused ({reason})" in outcome.error
    assert no_connect == []
    assert receiver.requests == []


def test_dns_rebinding_between_check_and_connect_cannot_redirect_the_request(
    user, secret, receiver, dns, no_connect, monkeypatch
):
    # Given: a name that resolves to a public address when checked and to loopback afterwards, for our
    # resolver and for any other lookup in the process
    dns.table["rebind.example.com"] = [[PUBLIC_IP], ["127.0.0.1"]]
    real_getaddrinfo = socket.getaddrinfo

    def rebound(host, *args, **kwargs):
        if host == "rebind.example.com":
            return real_getaddrinfo("127.0.0.1", *args, **kwargs)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebound)
    job = job_make(user, webhook_url=f"http://rebind.example.com:{receiver.port}/hook")
    delivery = enqueue(job)

    # When
    outcome = delivery_send(delivery_id=delivery.id)

    # Then: one lookup; the only connection asked for is the checked address; loopback never reached
    assert dns.lookups == ["rebind.example.com"]
    assert no_connect == [(PUBLIC_IP, receiver.port)]
    assert receiver.requests == []
    assert outcome.status == "retry"
    assert delivery.attempt_log.get().remote_address == PUBLIC_IP

    # And the next attempt re-checks: the rebound answer is now refused outright
    time.sleep(outcome.retry_in)
    again = delivery_send(delivery_id=delivery.id)
    assert again.status == "failed"
    assert "URL refused (loopback)" in again.error
    assert no_connect == [(PUBLIC_IP, receiver.port)]
    assert receiver.requests == []


def test_submission_check_raises_a_400_validation_error_with_the_reason(dns):
    dns.table.update(DNS_TABLE)

    with pytest.raises(ValidationFailed) as caught:
        webhook_url_validate(url="http://0x7f.1/hook")

    response = exception_handler(caught.value, {})
    assert response.status_code == 400
    assert response.data["error"]["code"] == "webhook_url_rejected"
    assert response.data["error"]["details"] == {"field": "webhook_url", "reason": "non_canonical_ip"}
    assert "non-standard encoding" in response.data["error"]["message"]


def test_submission_check_honours_the_allow_list(loopback_allowed):
    assert webhook_url_validate(url="http://127.0.0.1:9/hook") == "http://127.0.0.1:9/hook"


# --- exactly once --------------------------------------------------------------------------------


def test_event_enqueue_twice_for_one_outcome_creates_one_delivery_and_one_send(
    job, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks, transaction.atomic():
        first = job_event_enqueue(job=job)
        second = job_event_enqueue(job=job)
    with django_capture_on_commit_callbacks(execute=False) as later_callbacks, transaction.atomic():
        third = job_event_enqueue(job=job)

    assert first.pk == second.pk == third.pk
    assert first.event_id == third.event_id
    assert Delivery.objects.filter(job=job).count() == 1
    assert len(callbacks) == 1
    assert later_callbacks == []


def test_event_enqueue_without_webhook_url_returns_none(user):
    assert job_event_enqueue(job=job_make(user)) is None
    assert Delivery.objects.count() == 0


def test_a_job_that_has_not_ended_has_no_event(user):
    job = job_make(user, status=JobStatus.RUNNING, webhook_url="https://hooks.example.com/x")
    with pytest.raises(ValueError, match="has no event"):
        job_event_enqueue(job=job)


@pytest.mark.parametrize(
    ("event_type", "target"),
    [(EventType.BATCH_COMPLETED, "job_id"), (EventType.JOB_SUCCEEDED, "batch_id")],
)
def test_event_enqueue_refuses_an_event_of_the_other_kind(user, event_type, target):
    with pytest.raises(ValueError, match="is not a"):
        event_enqueue(
            event_type=event_type,
            owner_id=user.pk,
            url="https://hooks.example.com/x",
            payload={},
            **{target: 1},
        )


def test_batch_completed_event(user, receiver, loopback_allowed, secret):
    batch = batch_make(user, webhook_url=receiver.url)
    job_make(user, batch=batch)
    job_make(user, batch=batch, status=JobStatus.FAILED)
    with transaction.atomic():
        delivery = batch_event_enqueue(batch=batch)
        again = batch_event_enqueue(batch=batch)
    assert delivery.pk == again.pk

    delivery_send(delivery_id=delivery.id)

    payload = Webhook(secret).verify(receiver.requests[0].body, receiver.requests[0].headers)
    assert payload["type"] == "agent.batch.completed"
    assert payload["data"]["batch_id"] == str(batch.id)
    assert payload["data"]["status"] == "completed"
    assert payload["data"]["jobs"] == {
        "total": 2,
        "queued": 0,
        "running": 0,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
    }


# --- claiming, redelivery, sweep -----------------------------------------------------------------


def test_a_claimed_delivery_is_not_sent_twice_concurrently(job, receiver):
    delivery = enqueue(job)
    Delivery.objects.filter(pk=delivery.pk).update(locked_until=timezone.now() + timedelta(minutes=1))

    assert delivery_send(delivery_id=delivery.id).status == "skipped"
    assert receiver.requests == []


def test_a_message_of_an_older_series_is_skipped(job, receiver):
    delivery = enqueue(job)
    Delivery.objects.filter(pk=delivery.pk).update(series=2)

    assert delivery_send(delivery_id=delivery.id, series=1).status == "skipped"
    assert delivery_send(delivery_id=delivery.id, series=2).status == "succeeded"


def test_redeliver_sends_the_same_event_again_in_a_new_series(
    user, secret, job, receiver, django_capture_on_commit_callbacks
):
    delivery = enqueue(job)
    delivery_send(delivery_id=delivery.id)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        redelivered = job_event_redeliver(job=job)

    assert redelivered.pk == delivery.pk
    assert (redelivered.status, redelivered.series, redelivered.attempts) == ("pending", 2, 0)
    assert len(callbacks) == 1
    assert delivery_send(delivery_id=delivery.id, series=2).status == "succeeded"
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.event_id
    assert list(delivery.attempt_log.values_list("series", "number")) == [(1, 1), (2, 1)]


def test_a_redelivery_asked_during_an_attempt_is_sent_after_it_not_beside_it(user, secret, job, receiver):
    """Two POSTs with one webhook-id at once, and the first attempt's outcome lost, were the alternative."""
    delivery = enqueue(job)
    in_flight = timezone.now() + timedelta(seconds=60)
    Delivery.objects.filter(pk=delivery.pk).update(locked_until=in_flight, attempts=1)  # as a claim does

    job_event_redeliver(job=job)

    assert delivery_send(delivery_id=delivery.id, series=2).status == "skipped"
    assert receiver.requests == []
    Delivery.objects.filter(pk=delivery.pk).update(locked_until=timezone.now() - timedelta(seconds=1))
    assert delivery_send(delivery_id=delivery.id, series=2).status == "succeeded"
    assert len(receiver.requests) == 1


def test_redeliver_lifts_a_410_block(user, secret, job, receiver):
    delivery = enqueue(job)
    receiver.program(Reply(410))
    delivery_send(delivery_id=delivery.id)
    assert WebhookEndpointBlock.objects.count() == 1

    job_event_redeliver(job=job)

    assert WebhookEndpointBlock.objects.count() == 0
    assert delivery_send(delivery_id=delivery.id).status == "succeeded"


def test_redeliver_creates_the_delivery_when_there_was_none(user, job):
    delivery = job_event_redeliver(job=job)
    assert delivery.event_type == EventType.JOB_SUCCEEDED
    assert delivery.status == DeliveryStatus.PENDING


def test_redeliver_refusals(user, other_user, receiver, loopback_allowed):
    finished = job_make(user, webhook_url=receiver.url)
    with pytest.raises(NotFound) as caught:
        selectors.job_get(user=other_user, job_id=finished.id)  # what the endpoint asks first
    assert caught.value.code == "not_found"
    with pytest.raises(Conflict) as caught:
        job_event_redeliver(job=job_make(user, status=JobStatus.RUNNING, webhook_url=receiver.url))
    assert caught.value.code == "job_not_terminal"
    with pytest.raises(Conflict) as caught:
        job_event_redeliver(job=job_make(user))
    assert caught.value.code == "no_webhook_url"


def test_sweep_re_enqueues_only_overdue_unlocked_pending_deliveries(user, monkeypatch, settings):
    settings.WEBHOOK_SWEEP_OVERDUE_SEC = 60
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(
        sending,
        "enqueue_send",
        lambda *, delivery_id, series, countdown=None: sent.append((delivery_id, series)),
    )
    long_ago = timezone.now() - timedelta(minutes=10)
    overdue = enqueue(job_make(user, webhook_url="https://hooks.example.com/a"))
    recent = enqueue(job_make(user, webhook_url="https://hooks.example.com/b"))
    locked = enqueue(job_make(user, webhook_url="https://hooks.example.com/c"))
    done = enqueue(job_make(user, webhook_url="https://hooks.example.com/d"))
    Delivery.objects.filter(pk__in=[overdue.pk, locked.pk, done.pk]).update(next_attempt_at=long_ago)
    Delivery.objects.filter(pk=locked.pk).update(locked_until=timezone.now() + timedelta(minutes=1))
    Delivery.objects.filter(pk=done.pk).update(status=DeliveryStatus.SUCCEEDED)

    assert deliveries_sweep() == 1
    assert sent == [(overdue.pk, 1)]
    assert recent.pk not in [s[0] for s in sent]


def test_delivery_state_for_job(secret, job, receiver):
    assert delivery_state_for_job(job) is None
    receiver.program(Reply(500, body=b"down"))
    delivery = enqueue(job)
    delivery_send(delivery_id=delivery.id)

    state = delivery_state_for_job(job=job)

    assert state["webhook_id"] == delivery.event_id
    assert state["event_type"] == "agent.job.succeeded"
    assert (state["status"], state["attempts"], state["series"]) == ("pending", 1, 1)
    assert state["last_status_code"] == 500
    assert state["last_error"] == "HTTP 500"
    assert state["next_attempt_at"] is not None
    (attempt,) = state["attempt_log"]
    assert (attempt["number"], attempt["status_code"], attempt["outcome"]) == (1, 500, "retry")
    assert attempt["response_excerpt"] == "down"
    assert secret not in str(state)


def test_the_attempt_deadline_bounds_the_whole_exchange(secret, job, receiver, settings):
    # Given: a generous per-read timeout, but a short overall deadline, and a receiver that stalls
    settings.WEBHOOK_READ_TIMEOUT_SEC = 10.0
    settings.WEBHOOK_ATTEMPT_DEADLINE_SEC = 0.4
    receiver.program(Reply(200, delay=3.0))
    delivery = enqueue(job)

    # When
    started = time.monotonic()
    outcome = delivery_send(delivery_id=delivery.id)

    # Then
    assert time.monotonic() - started < 1.5
    assert outcome.status == "retry"
    assert outcome.error.startswith("timeout")


def test_an_unexpected_error_is_recorded_not_lost(secret, job, receiver, monkeypatch):
    def explode(**kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(http_attempt, "http_attempt", explode)
    delivery = enqueue(job)

    outcome = delivery_send(delivery_id=delivery.id)

    assert (outcome.status, outcome.error) == ("failed", "Internal error: RuntimeError")
    delivery.refresh_from_db()
    assert (delivery.status, delivery.locked_until) == (DeliveryStatus.FAILED, None)


def test_claims_that_never_recorded_an_outcome_stop_at_the_budget(secret, job, receiver):
    delivery = enqueue(job)
    Delivery.objects.filter(pk=delivery.pk).update(attempts=services.max_attempts())

    outcome = delivery_send(delivery_id=delivery.id)

    assert outcome.status == "failed"
    assert receiver.requests == []
