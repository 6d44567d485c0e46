"""The ASGI application (config/asgi.py): live requests on the event loop through Django's ASGI handler,
every other request whole through its WSGI handler, and all their sync code on the process's one pool."""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_started

from config.asgi import application, is_live


def scope_of(path: str, query: bytes = b"", method: str = "GET") -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }


async def get(path: str, query: bytes = b"") -> int:
    scope = scope_of(path, query)
    sent: list[dict] = []
    answered = asyncio.Event()
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await answered.wait()  # as a server: the client goes away once it has its answer
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    await application(scope, receive, send)
    return sent[0]["status"]


def test_requests_run_their_sync_code_on_the_shared_pool(settings):
    threads: list[str] = []

    def seen(**kwargs):
        threads.append(threading.current_thread().name)

    request_started.connect(seen)
    try:

        async def many():
            return await asyncio.gather(*(get("/api/ping") for _ in range(30)))

        assert asyncio.run(many()) == [200] * 30
    finally:
        request_started.disconnect(seen)
    assert len(threads) == 30
    assert {name.rsplit("_", 1)[0] for name in threads} == {"django-sync"}
    assert len(set(threads)) <= settings.API_SYNC_THREADS


JOB = "/api/agent/jobs/3f0e2b7c-1111-4222-8333-944445555666"


@pytest.mark.parametrize(
    ("method", "path", "query", "live"),
    [
        ("GET", f"{JOB}/events", b"", True),
        ("GET", f"{JOB}/events", b"last_event_id=1-0", True),
        ("GET", JOB, b"wait=30", True),
        ("GET", JOB, b"x=1&wait=5", True),
        ("GET", JOB, b"", False),
        ("GET", JOB, b"nowait=1", False),
        # As Django reads it: a percent-encoded key, a key without a value (a 400 then, not a wait)
        ("GET", JOB, b"w%61it=60", True),
        ("GET", JOB, b"x=%20&%77ait=1", True),
        ("GET", JOB, b"wait", True),
        ("GET", JOB, b"waiting=1&x=%20", False),
        ("OPTIONS", f"{JOB}/events", b"", False),
        ("HEAD", f"{JOB}/events", b"", False),
        ("POST", JOB, b"wait=30", False),
        ("POST", "/api/agent/jobs", b"", False),
        ("GET", f"{JOB}/cancel", b"wait=1", False),
        ("GET", "/api/ping", b"", False),
        # Paths that resolve to no view (a 404 on either handler)
        ("GET", f"{JOB}/events/", b"", False),
        ("GET", "/api/agent/jobs/not-a-uuid", b"wait=30", False),
        ("GET", "/nothing/here", b"wait=30", False),
    ],
)
def test_only_waits_and_event_streams_are_live(method, path, query, live):
    assert is_live(scope_of(path, query, method)) is live


@pytest.mark.django_db
def test_a_live_request_takes_the_asgi_handler_and_any_other_the_wsgi_one():
    handlers: list[type] = []

    def seen(sender, **kwargs):
        handlers.append(sender)

    request_started.connect(seen)
    try:
        # Unauthenticated: both answer 401 in the error shape, each through its own handler.
        assert asyncio.run(get("/api/agent/jobs/3f0e6a52-0c1b-4f8e-9d57-2f2d2b5f8a10", b"wait=1")) == 401
        assert asyncio.run(get("/api/agent/jobs/3f0e6a52-0c1b-4f8e-9d57-2f2d2b5f8a10")) == 401
        assert asyncio.run(get("/api/ping")) == 200
    finally:
        request_started.disconnect(seen)
    assert [issubclass(h, ASGIHandler) for h in handlers] == [True, False, False]
    assert all(issubclass(h, WSGIHandler) for h in handlers[1:])
