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


@pytest.fixture
def redis_cache(settings, monkeypatch):
    """Django's RedisCache configured, its Redis served by fakeredis (the throttle's one-round-trip path)."""
    import fakeredis
    import redis

    from apps.agent.services import shared_cache

    server = fakeredis.FakeServer()
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://throttle-test:6379/0",
            "OPTIONS": {"socket_timeout": 2},
        }
    }
    created = []

    def from_url(url, **options):
        created.append((url, options))
        return fakeredis.FakeRedis(server=server)

    monkeypatch.setattr(redis.Redis, "from_url", from_url)
    monkeypatch.setattr(shared_cache, "_clients", {})
    # Django's own client would try to connect: everything must go through the throttle's client.
    monkeypatch.setattr(
        caches["default"], "add", lambda *a, **k: pytest.fail("cache.add used"), raising=False
    )
    return server, created


@pytest.mark.django_db
def test_on_redis_the_window_is_one_atomic_round_trip_with_a_ttl(user, other_user, redis_cache):
    import fakeredis

    server, created = redis_cache
    allowed = [throttle().allow_request(request_of(user), None) for _ in range(5)]
    refused = throttle()
    assert refused.allow_request(request_of(user), None) is False

    assert allowed == [True, True, True, False, False]
    assert 0 < refused.wait() <= 60
    assert throttle().allow_request(request_of(other_user), None) is True  # per user
    # One client for the process, built from the cache's URL and socket options.
    assert created == [("redis://throttle-test:6379/0", {"socket_timeout": 2})]
    # Both keys carry the window's TTL, and the counter is exact.
    raw = fakeredis.FakeRedis(server=server)
    counters = [k for k in raw.scan_iter() if k.endswith(b":count")]
    assert len(counters) == 2
    assert sorted(int(raw.get(k)) for k in counters) == [1, 6]
    assert all(0 < raw.ttl(k) <= 60 for k in raw.scan_iter())


@pytest.mark.django_db
def test_on_redis_an_outage_fails_open(user, redis_cache, caplog):
    server, _ = redis_cache
    server.connected = False
    with caplog.at_level(logging.WARNING, logger="apps.agent.throttling"):
        assert all(throttle("1/min").allow_request(request_of(user), None) for _ in range(3))
    assert len(caplog.records) == 3 and "cache unavailable" in caplog.records[0].getMessage()
