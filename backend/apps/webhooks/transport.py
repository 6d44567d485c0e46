"""An httpx client that connects to an address checked by `ssrf.validate_webhook_url`, and only there.

The request keeps the URL's host name, so the `Host` header, TLS SNI and certificate verification all
use the name; only the TCP connection is pinned to the checked IP. No second DNS lookup happens, so a
DNS answer that changes between the check and the connection (rebinding) cannot redirect the request.
Environment proxies are ignored (`trust_env=False`): a proxy would do its own lookup.

Every socket operation is also bounded by an overall deadline: httpx's read timeout applies per read,
so without it a receiver dripping one byte every few seconds could hold a worker for hours.
"""

from __future__ import annotations

import functools
import ssl
import time
import typing

import httpcore
import httpx

from .ssrf import ResolvedTarget


class DeadlineStream(httpcore.NetworkStream):
    """A network stream whose reads and writes never wait past `deadline` (a `time.monotonic()` value)."""

    def __init__(self, inner: httpcore.NetworkStream, *, deadline: float):
        self._inner = inner
        self._deadline = deadline

    def _remaining(self, timeout: float | None, exc: type[Exception]) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise exc("the webhook attempt deadline passed")
        return remaining if timeout is None else min(timeout, remaining)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._remaining(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._remaining(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(
            ssl_context, server_hostname, self._remaining(timeout, httpcore.ConnectTimeout)
        )
        return DeadlineStream(stream, deadline=self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class PinnedBackend(httpcore.NetworkBackend):
    """A network backend that opens TCP connections to one fixed address, for one expected host."""

    def __init__(self, *, host: str, address: str, deadline: float | None = None):
        self._host = _bare_host(host)
        self._address = address
        self._deadline = deadline
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        # Redirects are not followed, so the only origin is the validated one; anything else is a bug
        # or a parser disagreement, and must not be contacted.
        if _bare_host(host) != self._host:
            raise httpcore.ConnectError(f"refusing to connect to unvalidated host {host!r}")
        if self._deadline is not None:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise httpcore.ConnectTimeout("the webhook attempt deadline passed")
            timeout = remaining if timeout is None else min(timeout, remaining)
        # An IP literal: the socket layer does not consult DNS for it.
        stream = self._inner.connect_tcp(
            self._address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        return stream if self._deadline is None else DeadlineStream(stream, deadline=self._deadline)

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are not webhook targets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _bare_host(host: str | bytes) -> str:
    if isinstance(host, bytes):
        host = host.decode("ascii")
    return host.lower().strip("[]").rstrip(".")


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """The verifying TLS context (certifi CAs), built once per process: loading CAs takes ~50 ms."""
    return httpx.create_ssl_context(verify=True, trust_env=False)


class PinnedTransport(httpx.HTTPTransport):
    """`httpx.HTTPTransport` whose connection pool uses a `PinnedBackend`. One connection, no retries.

    `verify` is a TLS context (tests pass one trusting their own CA); certificate checks cannot be
    turned off.
    """

    def __init__(
        self, *, target: ResolvedTarget, verify: ssl.SSLContext | None = None, deadline: float | None = None
    ):
        context = verify or default_ssl_context()
        super().__init__(verify=context, trust_env=False, retries=0)
        self.backend = PinnedBackend(host=target.host, address=target.address, deadline=deadline)
        # HTTPTransport does not expose `network_backend`; replace its pool with an identical one that
        # has it (httpx is pinned in pyproject.toml; tests/test_transport.py breaks if this changes).
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=1,
            max_keepalive_connections=0,
            http1=True,
            http2=False,
            retries=0,
            network_backend=self.backend,
        )


def pinned_client(
    *,
    target: ResolvedTarget,
    timeout: httpx.Timeout,
    deadline: float | None = None,
    verify: ssl.SSLContext | None = None,
) -> httpx.Client:
    """A client for ONE request to `target`: pinned address, no redirects, no proxies, explicit timeouts.

    `deadline` (a `time.monotonic()` value) bounds the whole exchange; past it, I/O raises a timeout.
    """
    return httpx.Client(
        transport=PinnedTransport(target=target, verify=verify, deadline=deadline),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )
