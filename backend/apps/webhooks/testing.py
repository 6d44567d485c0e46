"""A loopback webhook receiver for tests: records every request, answers from a programmable script.

    with WebhookReceiver() as receiver:
        receiver.program(Reply(500), Reply(200))   # then the default reply (200) for later requests
        ... deliver to receiver.url (allow-list "127.0.0.1" via WEBHOOK_ALLOWED_HOSTS) ...
        request = receiver.wait_for(2)[-1]
        Webhook(secret).verify(request.body, request.headers)

It binds 127.0.0.1 on a free port, serves each request on its own thread (a slow reply never blocks the
next request), and is plain Python so end-to-end tests in other apps can use it too.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Reply:
    """One programmed answer: status, body, headers, and a delay before answering (to force timeouts)."""

    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def redirect(location: str, *, status: int = 302) -> Reply:
    """A redirect answer. A webhook sender must not follow it."""
    return Reply(status=status, body=b"", headers={"Location": location})


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    received_at: float  # time.monotonic()


class WebhookReceiver:
    """A threaded HTTP server on 127.0.0.1:<free port>. Use as a context manager, or start()/stop()."""

    def __init__(
        self,
        *,
        default: Reply | None = None,
        path: str = "/hook",
        tls: ssl.SSLContext | None = None,
        port: int = 0,
    ):
        self.requested_port = port  # 0: any free port; a fixed one lets a test stop and restart a receiver
        self.default = default or Reply()
        self.path = path
        self.tls = tls  # a server-side context: serve HTTPS (for the TLS pinning tests)
        self.requests: list[ReceivedRequest] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver._handle(self)

            do_GET = do_POST
            do_PUT = do_POST

            def log_message(self, format: str, *args) -> None:  # keep test output clean
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", self.requested_port), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        # A short poll interval: shutdown() waits up to one interval, and tests stop many receivers.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="webhook-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # --- addresses -------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "start() the receiver first"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + self.path

    # --- script and observations -----------------------------------------------------------------
    def program(self, *replies: Reply) -> None:
        """Answer the next requests with `replies`, in order; then with `default`."""
        with self._lock:
            self._script.extend(replies)

    def wait_for(self, count: int, *, timeout: float = 5.0) -> list[ReceivedRequest]:
        """Block until `count` requests arrived (or `timeout`); returns a copy of all received requests."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.wait(remaining)
            return list(self.requests)

    def hits(self, path: str) -> list[ReceivedRequest]:
        with self._lock:
            return [request for request in self.requests if request.path == path]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        request = ReceivedRequest(
            method=handler.command,
            path=handler.path,
            headers={name.lower(): value for name, value in handler.headers.items()},
            body=body,
            received_at=time.monotonic(),
        )
        with self._arrived:
            self.requests.append(request)
            reply = self._script.popleft() if self._script else self.default
            self._arrived.notify_all()
        if reply.delay:
            time.sleep(reply.delay)
        try:
            handler.send_response(reply.status)
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(reply.body)))
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(reply.body)
        except OSError:
            pass  # the client gave up (timed out) before the delayed answer
        handler.close_connection = True
