"""The one error shape at the edges: oversized bodies, unknown URLs and crashes outside DRF views."""

from __future__ import annotations

import pytest
from django.test import override_settings
from django.urls import path

from core.errors import error_body


def boom(request):
    raise RuntimeError("a bug")


urlpatterns = [path("api/boom", boom), path("boom", boom)]
handler500 = "apps.core.http_errors.server_error"
handler404 = "apps.core.http_errors.page_not_found"


def test_body_over_the_limit_is_413_before_authentication(client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024

    response = client.post("/api/agent/jobs", b"x" * 1025, content_type="application/json")

    assert response.status_code == 413
    assert response.json() == error_body(
        "request_too_large", "The request body is larger than 1024 bytes.", {"max_bytes": 1024}
    )


@pytest.mark.django_db
def test_unknown_api_url_is_404_in_the_error_shape_elsewhere_html(client):
    api = client.get("/api/agent/jobs/not-a-uuid")
    other = client.get("/no-such-page")

    assert api.status_code == 404
    assert api.json() == error_body("not_found", "No such endpoint or object.")
    assert other.status_code == 404 and other["Content-Type"].startswith("text/html")


@override_settings(ROOT_URLCONF=__name__)
def test_a_crash_outside_drf_is_500_in_the_error_shape_under_api(client):
    client.raise_request_exception = False

    api = client.get("/api/boom")
    other = client.get("/boom")

    assert api.status_code == 500
    assert api.json() == error_body("internal_error", "Internal server error.")
    assert other.status_code == 500 and other["Content-Type"].startswith("text/html")
