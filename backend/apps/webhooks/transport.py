"""An httpx client that connects to an address checked by `ssrf.validate_webhook_url`, and only there.

The request keeps the URL's host name, so the `Host` header, TLS SNI and certificate verification all
use the name; only the TCP connection is pinned to the checked IP. No second DNS lookup happens, so a
DNS answer that changes between the check and the connection (rebinding) cannot redirect the request.
Environment proxies are ignored (`trust_env=False`): a proxy would do its own lookup.
"""

from __future__ import annotations

import ssl
import typing

import httpcore
import httpx

from .ssrf import ResolvedTarget


class PinnedBackend(httpcore.NetworkBackend):
    """A network backend that opens TCP connections to one fixed address for one expected host."""

    def __init__(self, *, host: str, address: str):
        self._host = _bare_host(host)
        self._address = address
        self._inner = httpcore.SyncBackend()
        self.connected_to: list[tuple[str, int]] = []

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
        self.connected_to.append((self._address, port))
        # An IP literal: the socket layer does not consult DNS for it.
        return self._inner.connect_tcp(
            self._address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are not webhook targets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _bare_host(host: str | bytes) -> str:
    if isinstance(host, bytes):
        host = host.decode("ascii")
    return host.lower().strip("[]").rstrip(".")


class PinnedTransport(httpx.HTTPTransport):
    """`httpx.HTTPTransport` whose connection pool uses a `PinnedBackend`. One connection, no retries."""

    def __init__(self, *, target: ResolvedTarget, verify: ssl.SSLContext | bool = True):
        super().__init__(verify=verify, trust_env=False, retries=0)
        self.backend = PinnedBackend(host=target.host, address=target.address)
        # HTTPTransport does not expose `network_backend`; replace its pool with an identical one that
        # has it (httpx is pinned in pyproject.toml; tests/test_transport.py breaks if this changes).
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=1,
            max_keepalive_connections=0,
            http1=True,
            http2=False,
            retries=0,
            network_backend=self.backend,
        )


def pinned_client(
    *, target: ResolvedTarget, timeout: httpx.Timeout, verify: ssl.SSLContext | bool = True
) -> httpx.Client:
    """A client for ONE request to `target`: pinned address, no redirects, no proxies, explicit timeouts."""
    return httpx.Client(
        transport=PinnedTransport(target=target, verify=verify),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )
