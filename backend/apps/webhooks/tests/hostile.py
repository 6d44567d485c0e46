"""The SSRF matrix: hostile webhook URLs, the reason each is refused, and the DNS answers they need."""

from __future__ import annotations

# Names the fake DNS answers (see conftest.FakeDNS); every other name does not resolve.
DNS_TABLE = {
    "localhost": ["127.0.0.1", "::1"],
    "metadata.google.internal": ["169.254.169.254"],
    "mixed.example.com": ["93.184.216.34", "10.1.2.3"],
    "internal.example.com": ["192.168.0.10"],
    "v6only.example.com": ["fd12:3456::1"],
}


def hostile_urls(port: int) -> list[tuple[str, str]]:
    """(url, expected reason code). URLs that could reach a loopback receiver use its `port`."""
    return [
        (f"http://localhost:{port}/hook", "loopback"),
        (f"http://LOCALHOST.:{port}/hook", "loopback"),
        (f"http://127.0.0.1:{port}/hook", "loopback"),
        (f"http://127.0.0.2:{port}/hook", "loopback"),
        (f"http://2130706433:{port}/hook", "non_canonical_ip"),
        (f"http://0177.0.0.1:{port}/hook", "non_canonical_ip"),
        (f"http://0x7f.1:{port}/hook", "non_canonical_ip"),
        (f"http://0x7f000001:{port}/hook", "non_canonical_ip"),
        (f"http://127.1:{port}/hook", "non_canonical_ip"),
        (f"http://127.000.000.001:{port}/hook", "non_canonical_ip"),
        (f"http://[::1]:{port}/hook", "loopback"),
        (f"http://[::ffff:127.0.0.1]:{port}/hook", "ipv4_mapped_ipv6"),
        (f"http://[::ffff:7f00:1]:{port}/hook", "ipv4_mapped_ipv6"),
        (f"http://[0:0:0:0:0:ffff:7f00:1]:{port}/hook", "ipv4_mapped_ipv6"),
        ("http://169.254.169.254/latest/meta-data/", "metadata_address"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "metadata_address"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata_address"),
        ("http://169.254.1.1/", "link_local"),
        ("http://[fe80::1]/", "link_local"),
        ("http://[fc00::1]/", "unique_local"),
        ("http://v6only.example.com/", "unique_local"),
        ("http://10.0.0.5/hook", "private_address"),
        ("http://172.16.0.1/hook", "private_address"),
        ("http://172.31.255.254/hook", "private_address"),
        ("http://192.168.1.1/hook", "private_address"),
        ("http://internal.example.com/hook", "private_address"),
        ("http://100.64.0.1/hook", "cgnat"),
        (f"http://0.0.0.0:{port}/hook", "unspecified"),
        ("http://[::]/hook", "unspecified"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://255.255.255.255/hook", "broadcast"),
        ("http://240.0.0.1/hook", "private_address"),
        ("http://[2002:7f00:1::]/hook", "6to4_embeds_non_public_ipv4"),
        ("http://[64:ff9b::a00:1]/hook", "nat64_embeds_non_public_ipv4"),
        (f"http://user@127.0.0.1:{port}/hook", "userinfo_not_allowed"),
        (f"http://example.com@127.0.0.1:{port}/hook", "userinfo_not_allowed"),
        (f"http://user:pw@example.com:{port}/hook", "userinfo_not_allowed"),
        (f"ftp://127.0.0.1:{port}/hook", "scheme_not_allowed"),
        ("file:///etc/passwd", "scheme_not_allowed"),
        (f"gopher://127.0.0.1:{port}/_GET", "scheme_not_allowed"),
        ("javascript:alert(1)", "scheme_not_allowed"),
        (f"http://mixed.example.com:{port}/hook", "private_address"),
        (f"http://127.0.0.1\\@example.com:{port}/hook", "invalid_url"),
        ("http://example.com:0/hook", "invalid_port"),
        ("http://example.com:65536/hook", "invalid_port"),
        ("http://no-such-host.invalid/hook", "dns_error"),
    ]
