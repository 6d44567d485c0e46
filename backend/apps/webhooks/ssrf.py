"""SSRF guard for outbound webhook URLs. Plain Python: no Django, so it is tested on its own.

`validate_webhook_url()` parses a URL strictly, refuses every encoding trick that makes a private
address look public (decimal, octal, hex and short IPv4 forms, IPv4-mapped IPv6, `user@host`), resolves
the host ONCE and checks every address it resolves to. It returns a `ResolvedTarget` carrying the
checked addresses; the sender connects to one of those (see `transport.py`), never to the result of a
second DNS lookup that an attacker could rebind.

An allow-list (`allowed_hosts`, from WEBHOOK_ALLOWED_HOSTS) names hosts that may resolve to non-public
addresses, for development and tests. It matches the URL's host exactly (lower-cased, IPv6 without
brackets); it never relaxes the parsing rules.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 2000

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> addresses as strings. Tests replace it; production uses getaddrinfo.
Resolver = Callable[[str, int], list[str]]

# Networks that are not covered (or not named clearly) by the `ipaddress` properties.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_LINK_LOCAL_V4 = ipaddress.ip_network("169.254.0.0/16")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_BROADCAST = ipaddress.ip_address("255.255.255.255")
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

# A DNS label after IDNA encoding: letters, digits, hyphens (underscores appear in real records).
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# WHATWG URL parsers treat a host whose LAST label is numeric as an IPv4 address in some encoding.
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_CANONICAL_OCTET = re.compile(r"^(?:0|[1-9][0-9]{0,2})$")


class WebhookURLRejected(Exception):
    """The URL may not be used as a webhook target.

    `reason` is a stable machine-readable code (e.g. "private_address", "scheme_not_allowed");
    `message` explains it to a human. `transient` is True only when the refusal may go away by itself
    (DNS did not answer), so the sender may retry; every other refusal is permanent.
    """

    def __init__(self, reason: str, message: str, *, transient: bool = False):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.transient = transient


@dataclass(frozen=True)
class ResolvedTarget:
    """A validated URL and the addresses that were checked. Connect only to `addresses`."""

    url: str
    scheme: str
    host: str  # lower-case, IDNA-encoded, no trailing dot; IPv6 without brackets
    port: int
    addresses: tuple[str, ...]
    allow_listed: bool = False

    @property
    def address(self) -> str:
        """The address to connect to: the first one the resolver returned (all were checked)."""
        return self.addresses[0]


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in resolver order, without duplicates.

    Raises `socket.gaierror` (an OSError) when resolution fails.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 zone id
        if address not in seen:
            seen.append(address)
    return seen


def address_rejection(ip: IPAddress) -> str | None:
    """Why `ip` is not a public unicast address (a reason code), or None when it is public."""
    if ip in _METADATA:
        return "metadata_address"
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv6 form that embeds an IPv4 address reaches that IPv4 host on many stacks.
        if ip.ipv4_mapped is not None:
            return "ipv4_mapped_ipv6"
        if ip in _IPV4_COMPATIBLE and not ip.is_unspecified and not ip.is_loopback:
            return "ipv4_compatible_ipv6"
        if ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            if address_rejection(embedded):
                return "nat64_embeds_non_public_ipv4"
        if ip.sixtofour is not None and address_rejection(ip.sixtofour):
            return "6to4_embeds_non_public_ipv4"
        if ip.teredo is not None and address_rejection(ip.teredo[1]):
            return "teredo_embeds_non_public_ipv4"
        if ip.is_loopback:
            return "loopback"
        if ip.is_unspecified:
            return "unspecified"
        if ip.is_link_local:
            return "link_local"
        if ip.is_site_local:
            return "site_local"
        if ip in ipaddress.ip_network("fc00::/7"):
            return "unique_local"
        if ip.is_multicast:
            return "multicast"
        if ip.is_reserved:
            return "reserved"
        if ip.is_private or not ip.is_global:
            return "not_global"
        return None
    if ip.is_loopback:
        return "loopback"
    if ip in _THIS_NETWORK:
        return "unspecified"
    if ip in _LINK_LOCAL_V4:
        return "link_local"
    if ip in _CGNAT:
        return "cgnat"
    if ip == _BROADCAST:
        return "broadcast"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private_address"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not_global"
    return None


def _reject_address(ip: IPAddress, *, host: str) -> WebhookURLRejected:
    reason = address_rejection(ip)
    assert reason is not None
    if str(ip) == host:
        return WebhookURLRejected(reason, f"{ip} is not a public address ({reason.replace('_', ' ')}).")
    # Not the address itself: the message reaches the user who gave the URL, and the addresses that names
    # resolve to on the server's network (postgres, redis.default.svc...) are not theirs to learn.
    return WebhookURLRejected(
        reason, f"{host} resolves to an address that is not public ({reason.replace('_', ' ')})."
    )


def _split_netloc(netloc: str) -> tuple[str, str | None, bool]:
    """(host, port text or None, bracketed) from a netloc that has no userinfo."""
    if netloc.startswith("["):
        end = netloc.find("]")
        if end == -1:
            raise WebhookURLRejected("invalid_host", "Unterminated IPv6 literal.")
        host, rest = netloc[1:end], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise WebhookURLRejected("invalid_host", "Unexpected characters after the IPv6 literal.")
        return host, (rest[1:] if rest else None), True
    if netloc.count(":") > 1:
        raise WebhookURLRejected("invalid_host", "An IPv6 address must be written in brackets.")
    host, sep, port = netloc.partition(":")
    return host, (port if sep else None), False


def _parse_port(text: str | None, scheme: str) -> int:
    if text is None:
        return DEFAULT_PORTS[scheme]
    if not text.isdigit() or not text.isascii():
        raise WebhookURLRejected("invalid_port", f"Port {text!r} is not a number.")
    port = int(text)
    if not 1 <= port <= 65535:
        raise WebhookURLRejected("invalid_port", f"Port {port} is outside 1-65535.")
    return port


def _normalize_hostname(host: str) -> str:
    """Lower-case IDNA form of a DNS name, without the trailing dot; rejects anything else."""
    if not host:
        raise WebhookURLRejected("invalid_host", "The URL has no host.")
    if "%" in host:
        raise WebhookURLRejected("invalid_host", "Percent-encoded hosts are not allowed.")
    try:
        # A non-ASCII name in the IDNA form that httpx contacts (IDNA 2008: straße.de is xn--strae-oqa.de,
        # where Python's codec, IDNA 2003, makes it strasse.de, another domain).
        ascii_host = host.lower() if host.isascii() else httpx.URL(f"http://{host}/").raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError):
        raise WebhookURLRejected("invalid_host", f"{host!r} is not a valid host name.") from None
    if ascii_host.endswith("."):
        ascii_host = ascii_host[:-1]
    labels = ascii_host.split(".")
    if not ascii_host or len(ascii_host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise WebhookURLRejected("invalid_host", f"{host!r} is not a valid host name.")
    return ascii_host


def _parse_host(host: str, *, bracketed: bool) -> tuple[str, IPAddress | None]:
    """(normalized host, its IP when the host is an IP literal). Refuses non-canonical IP forms."""
    if bracketed:
        if "%" in host:
            raise WebhookURLRejected("invalid_host", "IPv6 zone identifiers are not allowed.")
        try:
            ip6 = ipaddress.IPv6Address(host)
        except ValueError:
            raise WebhookURLRejected("invalid_host", f"[{host}] is not a valid IPv6 address.") from None
        return str(ip6), ip6
    name = _normalize_hostname(host)
    labels = name.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        # Browsers and curl read 2130706433, 0177.0.0.1, 0x7f.1 and 127.1 as 127.0.0.1. Only the plain
        # dotted-quad form is accepted, so the address we check is the address every client would use.
        if len(labels) != 4 or not all(_CANONICAL_OCTET.match(label) for label in labels):
            raise WebhookURLRejected(
                "non_canonical_ip",
                f"{host!r} looks like an IP address in a non-standard encoding; write it as a dotted quad.",
            )
        try:
            ip4 = ipaddress.IPv4Address(name)
        except ValueError:
            raise WebhookURLRejected("invalid_host", f"{host!r} is not a valid IPv4 address.") from None
        return str(ip4), ip4
    return name, None


def _normalize_allowed(entries: Iterable[str]) -> set[str]:
    allowed: set[str] = set()
    for entry in entries:
        entry = entry.strip().lower().strip("[]").rstrip(".")
        if entry:
            allowed.add(entry)
    return allowed


def validate_webhook_url(
    url: str,
    *,
    allowed_hosts: Iterable[str] = (),
    resolver: Resolver | None = None,
) -> ResolvedTarget:
    """Parse and check `url`, resolving its host once. Returns the target with every checked address.

    Raises `WebhookURLRejected` when the scheme is not http(s), the URL has userinfo, the host or port is
    malformed, an IP is written in a non-canonical encoding, or ANY resolved address is not public
    (loopback, private, link-local, metadata, CGNAT, multicast, unspecified, broadcast, reserved, IPv4
    embedded in IPv6) unless the host is allow-listed. A DNS failure raises it with `transient=True`.
    """
    if not isinstance(url, str) or not url:
        raise WebhookURLRejected("invalid_url", "The URL is empty.")
    if len(url) > MAX_URL_LENGTH:
        raise WebhookURLRejected("invalid_url", f"The URL is longer than {MAX_URL_LENGTH} characters.")
    # Whitespace, control characters and backslashes are parsed differently by different URL parsers.
    if any(ch <= " " or ch == "\x7f" or ch == "\\" for ch in url):
        raise WebhookURLRejected("invalid_url", "The URL contains whitespace, control characters or '\\'.")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise WebhookURLRejected("invalid_url", f"The URL cannot be parsed ({exc}).") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise WebhookURLRejected(
            "scheme_not_allowed", f"Only http and https URLs are allowed, not {parts.scheme or 'none'!r}."
        )
    netloc = parts.netloc
    if "@" in netloc:
        raise WebhookURLRejected(
            "userinfo_not_allowed", "Credentials in the URL (user@host) are not allowed."
        )
    host_text, port_text, bracketed = _split_netloc(netloc)
    port = _parse_port(port_text, scheme)
    host, literal_ip = _parse_host(host_text, bracketed=bracketed)
    allow_listed = host in _normalize_allowed(allowed_hosts)

    if literal_ip is not None:
        if not allow_listed and address_rejection(literal_ip):
            raise _reject_address(literal_ip, host=host)
        if bracketed and host != host_text.lower():
            # The HTTP client connects to the literal as written: a form other than the one checked here
            # would be accepted, then refused at every delivery by the transport's host pinning.
            raise WebhookURLRejected(
                "non_canonical_ip",
                f"[{host_text}] is an IPv6 address in a non-standard form; write it as [{host}].",
            )
        return ResolvedTarget(url, scheme, host, port, (str(literal_ip),), allow_listed)

    try:
        raw_addresses = (resolver or system_resolver)(host, port)
    except OSError as exc:
        raise WebhookURLRejected(
            "dns_error", f"{host} could not be resolved ({exc}).", transient=True
        ) from None
    if not raw_addresses:
        raise WebhookURLRejected("dns_error", f"{host} resolved to no address.", transient=True)
    addresses: list[IPAddress] = []
    for raw in raw_addresses:
        try:
            addresses.append(ipaddress.ip_address(raw))
        except ValueError:
            raise WebhookURLRejected("dns_error", f"{host} resolved to an invalid address {raw!r}.") from None
    if not allow_listed:
        # ALL addresses, not the first: a client may try any of them, and an attacker controls the order.
        for ip in addresses:
            if address_rejection(ip):
                raise _reject_address(ip, host=host)
    return ResolvedTarget(url, scheme, host, port, tuple(str(ip) for ip in addresses), allow_listed)
