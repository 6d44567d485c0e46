"""Fixtures shared by every test suite (backend/ and tests/)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
FIXTURE = REPO / "backend" / "apps" / "libros" / "fixtures" / "libros_prueba.json"


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


@pytest.fixture(autouse=True)
def _fake_job_event_store(request, monkeypatch):
    """Job events go to an in-memory Redis (fakeredis), except in tests on the real `stack`."""
    if "stack" in request.fixturenames:
        yield None
        return
    import fakeredis
    import fakeredis.aioredis

    from apps.agent.services import job_events

    server = fakeredis.FakeServer()
    monkeypatch.setattr(
        job_events, "_new_sync_client", lambda url: fakeredis.FakeRedis(server=server, decode_responses=True)
    )
    monkeypatch.setattr(
        job_events,
        "_new_async_client",
        lambda url: fakeredis.aioredis.FakeRedis(server=server, decode_responses=True),
    )
    monkeypatch.setattr(job_events, "_sync_clients", {})
    monkeypatch.setattr(job_events, "_async_clients", {})
    yield server
