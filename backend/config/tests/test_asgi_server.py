"""The API's uvicorn protocol keeps gunicorn's request limits and refuses in the error shape (in process;
tests/browser/test_shipped_server.py sends the same requests to the shipped server)."""

from __future__ import annotations

import asyncio
import json

import pytest
from django.conf import settings
from django.utils.module_loading import import_string
from uvicorn.config import Config
from uvicorn.server import ServerState

from config import asgi_server
from config.asgi_server import LimitedHttpToolsProtocol


class FakeTransport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


async def app(scope, receive, send):
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


def answer(request: bytes) -> tuple[int, dict[str, str], dict | bytes, bool]:
    """(status, headers, JSON body or raw body, closed) of the protocol's answer to `request`."""

    async def serve():
        asgi_server.REFUSAL_BODIES.clear()
        asgi_server.ApiWorker.refusal_bodies_load()
        protocol = LimitedHttpToolsProtocol(
            config=Config(app=app, access_log=False), server_state=ServerState(), app_state={}
        )
        transport = FakeTransport()
        protocol.connection_made(transport)
        protocol.data_received(request)
        await asyncio.sleep(0.05)  # the app's task, for a request that is not refused
        return transport

    transport = asyncio.run(serve())
    head, _, body = transport.written.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    shaped = json.loads(body) if headers.get("Content-Type") == "application/json" else body
    return int(lines[0].split()[1]), headers, shaped, transport.closed


HEAD = b"GET /api/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.mark.parametrize(
    "request_bytes, status, code",
    [
        (HEAD + b"X-Big: " + b"a" * 8190 + b"\r\n\r\n", 431, "request_header_fields_too_large"),
        (
            HEAD + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (b"GET /" + b"a" * 8190 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414, "uri_too_long"),
        (HEAD + b"Bad Header: x\r\n\r\n", 400, "bad_request"),
    ],
    ids=["431-size", "431-count", "414", "400"],
)
def test_a_request_over_the_limits_is_refused_in_the_error_shape(request_bytes, status, code):
    got, headers, body, closed = answer(request_bytes)

    assert (got, headers["Content-Type"], headers["Connection"]) == (status, "application/json", "close")
    assert body["error"]["code"] == code
    assert closed


def test_a_request_at_the_limits_reaches_the_app():
    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(98))  # with Host and X-Big: 100 headers
    request = b"GET /" + b"a" * 8189 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers
    request += b"X-Big: " + b"a" * (8190 - len(b"x-big")) + b"\r\n\r\n"

    got, _, body, _ = answer(request)

    assert (got, body) == (200, b"ok")


def test_every_middleware_is_async_capable():
    # One sync-only middleware puts every request under it, open waits included, on a thread of its own.
    # (Django's rule: a middleware that does not say so is sync only.)
    sync_only = [
        path for path in settings.MIDDLEWARE if not getattr(import_string(path), "async_capable", False)
    ]
    assert sync_only == []
