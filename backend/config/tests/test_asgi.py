"""The ASGI application runs every request's sync code on the process's pool (config/asgi.py)."""

from __future__ import annotations

import asyncio
import threading

from django.core.signals import request_started

from config.asgi import application


async def get(path: str) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
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
