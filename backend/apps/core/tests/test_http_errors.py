"""The one error shape at the edges: oversized bodies, unknown URLs and crashes outside DRF views, in every
mode (DEBUG=true included)."""

from __future__ import annotations

import pytest
from django.test import override_settings
from django.urls import path

from core.errors import error_body


def boom(request):
    raise RuntimeError("a bug")


urlpatterns = [path("api/boom", boom), path("boom", boom)]
README_PLACEHOLDER = "/api/agent/jobs/%3Cid%3E"  # .../jobs/<id> pasted as is
modes = pytest.mark.parametrize("debug", [False, True], ids=["debug-off", "debug-on"])


def test_body_over_the_limit_is_413_before_authentication(client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024

    response = client.post("/api/agent/jobs", b"x" * 1025, content_type="application/json")

    assert response.status_code == 413
    assert response.json() == error_body(
        "request_too_large", "The request body is larger than 1024 bytes.", {"max_bytes": 1024}
    )


@modes
@pytest.mark.django_db
@pytest.mark.parametrize(
    "url", ["/api/agent/jobs/not-a-uuid", README_PLACEHOLDER, "/api/agent/batches/<id>/report", "/api/nope"]
)
def test_unknown_api_url_is_404_in_the_error_shape_elsewhere_html(client, settings, debug, url):
    settings.DEBUG = debug

    api = client.get(url)
    other = client.get("/no-such-page")

    assert api.status_code == 404
    assert api.json() == error_body("not_found", "No such endpoint or object.")
    assert other.status_code == 404 and other["Content-Type"].startswith("text/html")


@modes
@override_settings(ROOT_URLCONF=__name__)
def test_a_crash_outside_drf_is_500_in_the_error_shape_under_api(client, settings, debug):
    settings.DEBUG = debug
    client.raise_request_exception = False

    api = client.get("/api/boom")
    other = client.get("/boom")

    assert api.status_code == 500
    assert api.json() == error_body("internal_error", "Internal server error.")
    assert other.status_code == 500 and other["Content-Type"].startswith("text/html")


@modes
@pytest.mark.django_db
def test_a_host_not_allowed_is_400_in_the_error_shape(client, settings, debug):
    settings.DEBUG = debug
    client.raise_request_exception = False

    response = client.get("/api/ping", HTTP_HOST="evil.example")

    assert response.status_code == 400
    assert response.json() == error_body("bad_request", "Bad request.")


@modes
@pytest.mark.django_db
def test_a_method_not_allowed_is_405_in_the_error_shape(client, settings, debug, user):
    settings.DEBUG = debug
    client.force_login(user)

    response = client.delete("/api/agent/jobs")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in response["Allow"]


@modes
def test_an_oversized_body_is_413_in_the_error_shape_in_every_mode(client, settings, debug):
    settings.DEBUG = debug
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024

    response = client.post("/api/agent/jobs/not-a-uuid", b"x" * 2048, content_type="application/json")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


@modes
@pytest.mark.django_db
def test_a_post_to_an_api_url_without_its_slash_is_a_404_naming_the_url(api, settings, debug):
    """Not a 301 (a client resends the redirect as a GET, without its body) nor, with DEBUG, a 500."""
    settings.DEBUG = debug
    response = api.post("/api/agent", {"query": "whales"}, format="json")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert response.json()["error"]["details"] == {"path": "/api/agent/"}
    # A GET (a person typing the URL) is still redirected.
    assert api.get("/api/docs")["Location"] == "/api/docs/"
