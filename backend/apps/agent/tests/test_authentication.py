"""Token authentication with a short per-process memory of successful checks (apps/agent/authentication.py)."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from apps.agent import authentication
from core import caches

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_memory(settings):
    settings.API_TOKEN_CACHE_SEC = 5.0
    authentication.forget_all()
    yield
    authentication.forget_all()


@pytest.fixture
def token(user):
    return Token.objects.create(user=user)


def client_with(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_a_token_checked_once_is_not_read_again_within_the_window(token, django_assert_num_queries):
    client = client_with(token.key)
    assert client.get("/api/agent/jobs").status_code == 200
    # The listing itself (an empty page: its COUNT); no token lookup.
    with django_assert_num_queries(1):
        assert client.get("/api/agent/jobs").status_code == 200
    assert len(authentication._checked) == 1
    assert authentication._checked.get(authentication.hashlib.sha256(token.key.encode()).hexdigest())


def test_the_window_ends(token, monkeypatch, django_assert_num_queries):
    client = client_with(token.key)
    assert client.get("/api/agent/jobs").status_code == 200
    later = caches.time.monotonic() + 6
    monkeypatch.setattr(caches.time, "monotonic", lambda: later)
    with django_assert_num_queries(2):  # the token lookup again, and the COUNT
        assert client.get("/api/agent/jobs").status_code == 200


def test_zero_turns_the_memory_off(token, settings, django_assert_num_queries):
    settings.API_TOKEN_CACHE_SEC = 0
    client = client_with(token.key)
    assert client.get("/api/agent/jobs").status_code == 200
    with django_assert_num_queries(2):
        assert client.get("/api/agent/jobs").status_code == 200
    assert len(authentication._checked) == 0


def test_a_deleted_token_or_a_deactivated_user_is_refused_at_once_in_this_process(token, user):
    client = client_with(token.key)
    assert client.get("/api/agent/jobs").status_code == 200
    key = token.key
    token.delete()
    assert client.get("/api/agent/jobs").status_code == 401

    fresh = Token.objects.create(user=user)
    client = client_with(fresh.key)
    assert client.get("/api/agent/jobs").status_code == 200
    user.is_active = False
    user.save()
    assert client.get("/api/agent/jobs").status_code == 401
    assert key != fresh.key


def test_wrong_tokens_are_never_remembered(token):
    client = client_with("0" * 40)
    assert client.get("/api/agent/jobs").status_code == 401
    assert client.get("/api/agent/jobs").status_code == 401
    assert len(authentication._checked) == 0


def test_each_request_gets_its_own_user_object(token):
    user, _ = authentication.CachedTokenAuthentication().authenticate_credentials(token.key)
    again, _ = authentication.CachedTokenAuthentication().authenticate_credentials(token.key)
    assert user.pk == again.pk and user is not again
