"""The per-user creation throttles: an exact fixed window in the shared cache, failing open."""

from __future__ import annotations

import logging

import pytest
from django.core.cache import cache, caches
from rest_framework.test import APIRequestFactory

from apps.agent.throttling import JobCreateThrottle


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()


def request_of(user):
    request = APIRequestFactory().post("/api/agent/jobs")
    request.user = user
    return request


def throttle(rate: str = "3/min") -> JobCreateThrottle:
    instance = JobCreateThrottle()
    instance.rate = rate
    instance.num_requests, instance.duration = instance.parse_rate(rate)
    return instance


@pytest.mark.django_db
def test_allows_exactly_the_rate_then_refuses_until_the_window_ends(user, other_user):
    allowed = [throttle().allow_request(request_of(user), None) for _ in range(5)]
    refused = throttle()
    refused.allow_request(request_of(user), None)

    assert allowed == [True, True, True, False, False]
    assert 0 < refused.wait() <= 60
    assert throttle().allow_request(request_of(other_user), None) is True  # per user


@pytest.mark.django_db
def test_a_counter_that_expires_between_add_and_incr_starts_the_next_window(user, monkeypatch):
    backend = caches["default"]  # the object itself: the `cache` proxy follows settings changes
    real_incr = backend.incr
    calls = []

    def incr_once_expired(key, delta=1):
        calls.append(key)
        if len(calls) == 1:
            raise ValueError("expired")
        return real_incr(key, delta)

    monkeypatch.setattr(backend, "incr", incr_once_expired)

    assert throttle().allow_request(request_of(user), None) is True
    assert len(calls) == 2


@pytest.mark.django_db
def test_fails_open_with_a_warning_when_the_cache_raises(user, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise ConnectionError("redis is down")

    monkeypatch.setattr(caches["default"], "add", broken)

    with caplog.at_level(logging.WARNING, logger="apps.agent.throttling"):
        assert all(throttle("1/min").allow_request(request_of(user), None) for _ in range(3))
    assert [r.getMessage() for r in caplog.records] == [
        "throttle job_create: cache unavailable (ConnectionError); allowing the request"
    ] * 3
