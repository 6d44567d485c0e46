"""ssrf.validate_webhook_url: the hostile-URL matrix, canonical forms, allow-list, and resolution."""

from __future__ import annotations

import ipaddress

import pytest

from apps.webhooks.ssrf import WebhookURLRejected, address_rejection, validate_webhook_url

from .conftest import PUBLIC_IP
from .hostile import DNS_TABLE, hostile_urls


@pytest.fixture
def resolver(dns):
    dns.table.update(DNS_TABLE)
    dns.table["hooks.example.com"] = [PUBLIC_IP, "2606:2800:220:1:248:1893:25c8:1946"]
    return dns


def test_matrix_has_at_least_fifteen_hostile_urls():
    assert len(hostile_urls(8080)) >= 15


@pytest.mark.parametrize(("url", "reason"), hostile_urls(8080))
def test_hostile_url_is_refused_with_its_reason(resolver, url, reason):
    # When
    with pytest.raises(WebhookURLRejected) as caught:
        validate_webhook_url(url)

    # Then: a stable code and a message a human can act on
    assert caught.value.reason == reason
    assert caught.value.message
    assert caught.value.transient is (reason == "dns_error")


def test_public_host_is_accepted_with_every_address_checked(resolver):
    target = validate_webhook_url("https://Hooks.Example.com./path?q=1")

    assert target.scheme == "https"
    assert target.host == "hooks.example.com"
    assert target.port == 443
    assert target.addresses == (PUBLIC_IP, "2606:2800:220:1:248:1893:25c8:1946")
    assert target.address == PUBLIC_IP
    assert resolver.lookups == ["hooks.example.com"]


def test_public_ip_literal_is_accepted_without_dns(resolver):
    target = validate_webhook_url(f"http://{PUBLIC_IP}:8443/x")

    assert target.addresses == (PUBLIC_IP,)
    assert target.port == 8443
    assert resolver.lookups == []


def test_allow_list_permits_loopback_by_exact_host(resolver):
    target = validate_webhook_url("http://127.0.0.1:9/hook", allowed_hosts=["127.0.0.1"])
    assert target.allow_listed and target.address == "127.0.0.1"

    named = validate_webhook_url("http://localhost:9/hook", allowed_hosts=["localhost"])
    assert named.addresses == ("127.0.0.1", "::1")

    v6 = validate_webhook_url("http://[::1]:9/hook", allowed_hosts=["[::1]"])
    assert v6.address == "::1"


def test_allow_list_does_not_relax_encodings_or_other_hosts(resolver):
    with pytest.raises(WebhookURLRejected) as caught:
        validate_webhook_url("http://2130706433:9/hook", allowed_hosts=["127.0.0.1"])
    assert caught.value.reason == "non_canonical_ip"

    with pytest.raises(WebhookURLRejected) as caught:
        validate_webhook_url("http://localhost:9/hook", allowed_hosts=["127.0.0.1"])
    assert caught.value.reason == "loopback"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
        ("127.8.9.10", "loopback"),
        ("100.127.255.255", "cgnat"),
        ("100.128.0.1", None),
        ("172.32.0.1", None),
        ("198.18.0.1", "private_address"),
        ("::ffff:8.8.8.8", "ipv4_mapped_ipv6"),
        ("::127.0.0.1", "ipv4_compatible_ipv6"),
        ("ff02::1", "multicast"),
        ("fec0::1", "site_local"),
        ("2001:db8::1", "not_global"),
    ],
)
def test_address_classes(address, reason):
    assert address_rejection(ipaddress.ip_address(address)) == reason


def test_a_unicode_host_is_checked_as_the_name_the_http_client_contacts(resolver):
    """IDNA 2008, as httpx encodes it: straße.de is xn--strae-oqa.de (Python's IDNA 2003 codec made it
    strasse.de: another domain checked, and every delivery refused by the transport's host pinning)."""
    resolver.table["xn--strae-oqa.de"] = [PUBLIC_IP]
    target = validate_webhook_url("https://straße.de/hook")
    assert target.host == "xn--strae-oqa.de" and resolver.lookups == ["xn--strae-oqa.de"]
    with pytest.raises(WebhookURLRejected) as caught:
        validate_webhook_url("https://☃.net/hook")  # no IDNA 2008 form: httpx could not send to it
    assert caught.value.reason == "invalid_host"


def test_an_ipv6_literal_must_be_written_in_its_canonical_form(resolver):
    public = "2606:4700::1111"
    assert validate_webhook_url(f"http://[{public}]/h").address == public
    assert validate_webhook_url("http://[2606:4700::AB]/h").address == "2606:4700::ab"
    with pytest.raises(WebhookURLRejected) as caught:
        validate_webhook_url("http://[2606:4700:0:0::1111]/h")
    assert caught.value.reason == "non_canonical_ip" and f"[{public}]" in caught.value.message


def test_a_refusal_does_not_tell_which_internal_address_a_name_has(resolver):
    resolver.table["postgres"] = ["172.18.0.3"]
    with pytest.raises(WebhookURLRejected) as caught:
        validate_webhook_url("http://postgres/hook")
    assert caught.value.reason == "private_address" and "172.18" not in caught.value.message
    assert "postgres resolves to an address that is not public" in caught.value.message
