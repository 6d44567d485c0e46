"""Fixtures of the webhooks tests: a loopback receiver, compressed timing, a fake DNS."""

from __future__ import annotations

import socket

import pytest

from apps.webhooks import ssrf
from apps.webhooks.testing import WebhookReceiver

# Public (globally routable) addresses the fake DNS may answer with. Nothing listens there for these
# tests: reaching them would fail, which is the point of the rebinding test.
PUBLIC_IP = "93.184.216.34"


@pytest.fixture(autouse=True)
def webhook_settings(settings):
    """Fast, deterministic delivery timing; loopback allowed only where a test says so."""
    # The shared `user` fixtures set passwords: a fast hasher saves ~0.5 s per test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.WEBHOOK_ALLOWED_HOSTS = []
    settings.WEBHOOK_CONNECT_TIMEOUT_SEC = 0.5
    settings.WEBHOOK_READ_TIMEOUT_SEC = 0.3
    settings.WEBHOOK_ATTEMPT_DEADLINE_SEC = 2.0
    settings.WEBHOOK_RETRY_SCHEDULE = [0.01, 0.01, 0.01]
    settings.WEBHOOK_RETRY_JITTER = 0.0
    settings.WEBHOOK_RETRY_AFTER_MAX_SEC = 30.0
    settings.WEBHOOK_SECRET_GRACE_SEC = 3600.0
    settings.WEBHOOK_RESPONSE_MAX_BYTES = 1024
    settings.WEBHOOK_RESPONSE_EXCERPT_CHARS = 64
    return settings


@pytest.fixture
def receiver():
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
def loopback_allowed(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]


class FakeDNS:
    """A resolver answering from a table; a list of answers is consumed one per lookup (rebinding)."""

    def __init__(self) -> None:
        self.table: dict[str, list[str] | list[list[str]]] = {}
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        answer = self.table.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if answer and isinstance(answer[0], list):
            # A sequence of answers: one per lookup, the last one repeats.
            return list(answer.pop(0) if len(answer) > 1 else answer[0])  # type: ignore[arg-type]
        return list(answer)  # type: ignore[arg-type]


@pytest.fixture
def dns(monkeypatch) -> FakeDNS:
    fake = FakeDNS()
    fake.table["localhost"] = ["127.0.0.1", "::1"]
    monkeypatch.setattr(ssrf, "system_resolver", fake)
    return fake
