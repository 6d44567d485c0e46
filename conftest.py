"""Fixtures shared by every test suite (backend/ and tests/)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
FIXTURE = REPO / "backend" / "apps" / "libros" / "fixtures" / "libros_prueba.json"


@pytest.fixture(scope="session", autouse=True)
def _static_files_without_collectstatic():
    """In-process tests render templates ({% static %}) without a `collectstatic` run first.

    The shipped servers use WhiteNoise's manifest storage, which needs the collected files and their
    manifest; backend/config/tests/test_static_files.py and tests/browser/ test that storage for real.
    """
    from django.test.utils import override_settings

    plain = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    with override_settings(STORAGES=plain):
        yield


@pytest.fixture(scope="session")
def catalogue_vector_settings():
    """VectorSettings of a store built from the real catalogue fixture (320 books, the real local model).

    Built under var/test_vector_db and reused across runs: the build is incremental, so an unchanged
    fixture costs no embedding at all after the first run.
    """
    from django.conf import settings

    from agent.embeddings import get_embedder
    from agent.vector_build import build_vector_db
    from apps.libros.catalogue import libro_document
    from apps.libros.models import Libro

    directory = REPO / "var" / "test_vector_db"
    vector = dataclasses.replace(
        settings.VECTOR, dir=directory, manifest_path=directory / "manifest.json", url=None, dataset_path=None
    )
    documents = [
        libro_document(Libro(pk=row["pk"], **row["fields"])) for row in json.loads(FIXTURE.read_text())
    ]
    build_vector_db(
        documents,
        settings=vector,
        embedder=get_embedder(vector),
        source="fixture:libros_prueba",
        progress=False,
    )
    return vector
