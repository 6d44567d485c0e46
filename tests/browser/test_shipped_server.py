"""The API server as `make up` and compose run it (gunicorn with config/gunicorn.conf.py: uvicorn workers,
config/asgi_server.py), over HTTP: every answer under /api/ is the one error shape, even what the server
refuses before Django (gunicorn's limits kept); static files are served compressed with content-hashed names."""

from __future__ import annotations

import re
import socket

import httpx
import pytest

pytestmark = [pytest.mark.e2e]


def raw_request(base_url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (httpx would refuse some of these requests) and read the whole answer."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    "request_bytes, status, code",
    [
        (
            b"GET /api/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (
            b"GET /api/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(101))
            + b"\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (b"GET /api/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414, "uri_too_long"),
        (b"GET /api/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n", 400, "bad_request"),
    ],
    ids=["431-size", "431-count", "414", "400"],
)
def test_what_the_server_refuses_is_in_the_error_shape(shipped_stack, request_bytes, status, code):
    got, headers, body = raw_request(shipped_stack.base_url, request_bytes)

    assert got == status
    assert headers["Content-Type"] == "application/json"
    assert httpx.Response(status, content=body).json()["error"]["code"] == code


@pytest.mark.parametrize(
    "path", ["/api/agent/jobs/not-a-uuid", "/api/agent/jobs/<id>", "/api/agent/batches/<id>"]
)
def test_an_unmatched_api_url_is_a_json_404(shipped_stack, path):
    response = httpx.get(f"{shipped_stack.base_url}{path}", timeout=10)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_docs_assets_are_served_compressed_and_cache_busted(shipped_stack):
    page = httpx.get(f"{shipped_stack.base_url}/api/docs/", timeout=10).text
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert len(assets) >= 3, page
    for asset in assets:
        assert re.search(r"\.[0-9a-f]{12}\.\w+$", asset), asset
        response = httpx.get(
            f"{shipped_stack.base_url}{asset}", headers={"Accept-Encoding": "gzip"}, timeout=10
        )
        assert response.status_code == 200, asset
        if asset.endswith((".js", ".css")):  # images are not compressed
            assert response.headers["Content-Encoding"] == "gzip", asset
        assert "immutable" in response.headers["Cache-Control"], asset
