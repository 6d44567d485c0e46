"""transport.pinned_client: the connection goes to the checked address; Host, SNI and TLS use the name."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from apps.webhooks.ssrf import ResolvedTarget, validate_webhook_url
from apps.webhooks.testing import WebhookReceiver
from apps.webhooks.transport import pinned_client

TIMEOUT = httpx.Timeout(1.0)


def test_request_keeps_the_host_name_and_resolves_it_once(dns, receiver):
    # Given: an allow-listed name that resolves to the receiver's loopback address, and would then
    # resolve elsewhere if anyone asked again
    dns.table["hooks.test"] = [["127.0.0.1"], ["10.9.9.9"]]
    target = validate_webhook_url(f"http://hooks.test:{receiver.port}/hook", allowed_hosts=["hooks.test"])

    # When
    with pinned_client(target=target, timeout=TIMEOUT) as client:
        response = client.post(target.url, content=b"{}")

    # Then
    assert response.status_code == 200
    (request,) = receiver.requests
    assert request.headers["host"] == f"hooks.test:{receiver.port}"
    assert dns.lookups == ["hooks.test"]


def test_connection_to_another_host_than_the_validated_one_is_refused(receiver):
    target = ResolvedTarget(
        url=receiver.url, scheme="http", host="hooks.test", port=receiver.port, addresses=("127.0.0.1",)
    )
    with pinned_client(target=target, timeout=TIMEOUT) as client, pytest.raises(httpx.ConnectError):
        client.post(receiver.url, content=b"{}")  # host 127.0.0.1 != validated host hooks.test
    assert receiver.requests == []


def test_redirects_are_not_followed(receiver):
    from apps.webhooks.testing import redirect

    receiver.program(redirect(f"{receiver.base_url}/elsewhere"))
    target = validate_webhook_url(receiver.url, allowed_hosts=["127.0.0.1"])
    with pinned_client(target=target, timeout=TIMEOUT) as client:
        response = client.post(target.url, content=b"{}")
    assert response.status_code == 302
    assert receiver.hits("/elsewhere") == []


def test_environment_proxies_are_ignored(receiver, monkeypatch):
    # A proxy would resolve the name itself, defeating the pinning.
    monkeypatch.setenv("HTTP_PROXY", "http://10.255.255.1:3128")
    monkeypatch.setenv("ALL_PROXY", "http://10.255.255.1:3128")
    target = validate_webhook_url(receiver.url, allowed_hosts=["127.0.0.1"])
    with pinned_client(target=target, timeout=TIMEOUT) as client:
        assert client.post(target.url, content=b"{}").status_code == 200


# --- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory):
    """A CA, and a server certificate for "hooks.test" signed by it. Returns (server ctx, client ctx)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.test")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    client = ssl.create_default_context(cadata=ca_cert.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


def _tls_target(host: str, port: int) -> ResolvedTarget:
    return ResolvedTarget(
        url=f"https://{host}:{port}/hook", scheme="https", host=host, port=port, addresses=("127.0.0.1",)
    )


def test_tls_verifies_the_host_name_while_connecting_to_the_pinned_ip(tls_pair):
    server_ctx, client_ctx = tls_pair
    with WebhookReceiver(tls=server_ctx) as receiver:
        target = _tls_target("hooks.test", receiver.port)
        with pinned_client(target=target, timeout=TIMEOUT, verify=client_ctx) as client:
            response = client.post(target.url, content=b"{}")
        assert response.status_code == 200
        assert receiver.requests[0].headers["host"] == f"hooks.test:{receiver.port}"


def test_tls_refuses_a_certificate_for_another_name(tls_pair):
    server_ctx, client_ctx = tls_pair
    with WebhookReceiver(tls=server_ctx) as receiver:
        target = _tls_target("other.test", receiver.port)
        with (
            pinned_client(target=target, timeout=TIMEOUT, verify=client_ctx) as client,
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED|certificate"),
        ):
            client.post(target.url, content=b"{}")
        assert receiver.requests == []


def test_pinned_backend_passes_an_ip_literal_to_the_socket_layer(monkeypatch, receiver):
    seen: list[str] = []
    original = httpcore.SyncBackend.connect_tcp

    def spy(self, host, port, *args, **kwargs):
        seen.append(host)
        return original(self, host, port, *args, **kwargs)

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", spy)
    target = ResolvedTarget(
        url=f"http://hooks.test:{receiver.port}/hook",
        scheme="http",
        host="hooks.test",
        port=receiver.port,
        addresses=("127.0.0.1",),
    )
    with pinned_client(target=target, timeout=TIMEOUT) as client:
        client.post(target.url, content=b"{}")
    assert seen == ["127.0.0.1"]
    ipaddress.ip_address(seen[0])
