"""Static files are served by the API process itself (WhiteNoise), compressed and cache-busted."""

from __future__ import annotations

import re

import pytest
from django.core.management import call_command
from django.templatetags.static import static
from django.test import Client

SHIPPED_STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
ASSETS = [
    "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js",
    "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css",
    "drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js",
    "admin/css/base.css",
]


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """`collectstatic` into a fresh STATIC_ROOT with the shipped storage, as `make up` and compose run it."""
    from django.test.utils import override_settings

    root = tmp_path_factory.mktemp("static")
    with override_settings(STORAGES=SHIPPED_STORAGES, STATIC_ROOT=root, DEBUG=False):
        call_command("collectstatic", "--noinput", verbosity=0)
        yield root


def test_the_shipped_storage_is_whitenoise_manifest():
    from django.conf import settings

    # The session fixture swaps it for tests; the module's own value is what the servers run.
    from config import settings as shipped

    assert (
        shipped.STORAGES["staticfiles"]["BACKEND"]
        == "whitenoise.storage.CompressedManifestStaticFilesStorage"
    )
    # WhiteNoise's middleware, made async-capable (apps/core/static_files.py).
    assert "apps.core.static_files.StaticFilesMiddleware" in settings.MIDDLEWARE


@pytest.mark.parametrize("asset", ASSETS)
def test_collected_assets_are_served_hashed_compressed_and_cached_for_long(collected, asset):
    url = static(asset)
    assert re.search(r"\.[0-9a-f]{12}\.(js|css)$", url), url  # cache-busted name
    response = Client().get(url, HTTP_ACCEPT_ENCODING="gzip")
    assert response.status_code == 200
    assert response["Content-Encoding"] == "gzip"
    assert "immutable" in response["Cache-Control"]
    assert "max-age=315360000" in response["Cache-Control"]


def test_an_unknown_static_file_is_a_404(collected):
    assert Client().get("/static/nothing-here.js").status_code == 404


@pytest.mark.django_db
def test_docs_pages_point_at_collected_assets_and_nothing_outside(collected):
    for path in ("/api/docs/", "/api/redoc/"):
        html = Client().get(path).content.decode()
        srcs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert srcs, path
        for src in srcs:
            assert not src.startswith(("http:", "https:", "//")), (path, src)
        for src in (s for s in srcs if s.startswith("/static/")):
            assert Client().get(src).status_code == 200, src
    redoc = Client().get("/api/redoc/").content.decode()
    assert "fonts.googleapis" not in redoc and "fonts.gstatic" not in redoc
    # ReDoc's own logo comes from a CDN whatever its options say: the page's policy keeps it on the host.
    assert "img-src 'self' data:;" in redoc and "default-src 'self';" in redoc
    swagger = Client().get("/api/docs/").content.decode()
    assert '"validatorUrl": null' in swagger


@pytest.mark.django_db
def test_with_debug_on_the_docs_assets_are_served_too(collected, settings):
    """`DEBUG=true` (a developer's choice): WhiteNoise serves the same assets (unhashed names, from the
    apps' static folders), so the pages work in both modes."""
    settings.DEBUG = True
    client = Client()  # a new handler: WhiteNoise reads DEBUG when it is built
    for path in ("/api/docs/", "/api/redoc/", "/admin/login/"):
        html = client.get(path).content.decode()
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
        assert assets, path
        for asset in assets:
            assert client.get(asset).status_code == 200, asset
