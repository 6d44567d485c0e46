"""Fixtures of the security scenarios (docs/reliability.md, "Security").

In-process tests get a known configuration (stub LLM, eager Celery, a local-memory cache) and API clients
authenticated as two different users. End-to-end tests reuse the e2e stack (live API in this process,
real Celery worker processes, the OpenAI-compatible test server), on database 1 of the run's own
redis-server, so that they never consume, or flush, the messages of the e2e tests' database 0.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time

import httpx
import pytest
import redis as redis_lib

# The e2e fixtures, shared as they are (pytest finds fixtures imported into a conftest).
from tests.e2e.conftest import (  # noqa: F401
    e2e_vector_settings,
    llm_server,
    stack,
    token,
)
from tests.e2e.harness import (
    BACKEND,
    free_port,  # noqa: F401 - shared by the security tests
)


@pytest.fixture(scope="session")
def redis_url(redis_server) -> str:
    """Overrides the e2e `redis_url`: database 1 of the run's redis-server, flushed once per session
    and after each stack test."""
    url = f"{redis_server.base_url}/1"
    client = redis_lib.Redis.from_url(url, socket_connect_timeout=2)
    client.ping()
    client.flushdb()
    return url


@pytest.fixture
def known_settings(settings):
    """The configuration of in-process tests, whatever the machine's environment says."""
    from config.celery_app import app

    settings.LLM = dataclasses.replace(
        settings.LLM,
        provider="stub",
        api_key=None,
        base_url=None,
        cost_mode=type(settings.LLM.cost_mode)("paid"),
        allow_byo_key=False,
    )
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    from django.core.cache import cache

    cache.clear()  # local memory outlives a test: throttle counters and keys must not leak across tests
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield settings
    app.conf.task_always_eager = False
    app.conf.task_eager_propagates = False


def _client_for(user):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    client.user = user
    return client


@pytest.fixture
def user(db, django_user_model):
    return django_user_model.objects.create_user(username="alice")


@pytest.fixture
def other_user(db, django_user_model):
    return django_user_model.objects.create_user(username="mallory")


@pytest.fixture
def api(known_settings, user):
    """Alice, authenticated with a real token (the production authentication class)."""
    return _client_for(user)


@pytest.fixture
def other_api(known_settings, other_user):
    """Mallory, another user with her own token."""
    return _client_for(other_user)


@pytest.fixture
def anon(known_settings):
    from rest_framework.test import APIClient

    return APIClient()


# --- helpers for tests that start processes ----------------------------------------------------------


def wait_http(url: str, *, timeout: float, process: subprocess.Popen | None = None, **kwargs) -> None:
    """Wait until `url` answers any HTTP status (the process listens); raise if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1, **kwargs)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM the process group this test started, then SIGKILL it if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=10)


def start_process(argv: list[str], *, env: dict[str, str], log_path) -> subprocess.Popen:
    """A child process in its own session (so `stop_process` ends it and its children), cwd backend/."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv, cwd=BACKEND, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
