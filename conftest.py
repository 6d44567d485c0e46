"""Fixtures shared by every test suite (backend/ and tests/)."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
FIXTURE = REPO / "backend" / "apps" / "libros" / "fixtures" / "libros_prueba.json"


#: Markers of the tests that start processes or push hundreds of jobs: tens of seconds each, against
#: milliseconds for the rest.
LONG_MARKERS = ("e2e", "faults", "slow")


def pytest_collection_modifyitems(config, items):
    """Tests of one database backend's own code (`sqlite_only`: config/sqlite3's write lock) are deselected,
    not skipped, on the other backend: they do not apply there, and CI runs them in its SQLite pass.
    Tests that make PostgreSQL databases of their own whatever the run's database (`postgres_only`: the
    cluster on one machine) are deselected in the SQLite pass: they would run the very same thing twice.

    The long tests (`LONG_MARKERS`) come first, each group in collection order, and `make test` runs
    pytest-xdist's `worksteal` scheduler: the long tests start while the short ones fill the gaps, and a
    worker that runs out of tests takes half of the other's queue. Collected last (tests/ after backend/)
    under `--dist load`, the long tests all ran at the end from queues fixed in advance: one xdist worker
    finished ~4 minutes before the other (2026-12-03, SQLite pass: 426 s of tests against 685 s).
    Tests that start processes run side by side with each other and with in-process tests; their timing
    bounds hold on a loaded machine, but not beside the cluster (marker `cluster`), whose processes fill
    both cores for minutes: `make test` runs it alone, after the rest.
    """
    from django.conf import settings

    sqlite = settings.DATABASES["default"]["ENGINE"] == "config.sqlite3"
    other_marker = "postgres_only" if sqlite else "sqlite_only"
    other = [item for item in items if item.get_closest_marker(other_marker) is not None]
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = [item for item in items if item.get_closest_marker(other_marker) is None]
    items.sort(key=lambda item: not any(item.get_closest_marker(name) for name in LONG_MARKERS))


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
def redis_server(tmp_path_factory):
    """This test run's own redis-server (one per pytest process, so one per xdist worker too).

    Every fixture that needs a real Redis takes a database of it: no fixed database numbers on the
    machine's shared server, so concurrent runs never steal each other's tasks.
    """
    from tests.e2e.harness import PrivateRedis

    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    server.start(new_port_on_failure=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def _openai_server_of_module():
    from openai_testserver import start_in_thread

    with start_in_thread() as handle:
        yield handle


@pytest.fixture
def openai_server(_openai_server_of_module):
    """The project's OpenAI-compatible test server in a thread of this process (one per test module), reset
    (counters, faults, limits) before each test. End-to-end tests use `llm_server` (tests/e2e/conftest.py)."""
    _openai_server_of_module.reset()
    return _openai_server_of_module


@pytest.fixture(scope="session")
def catalogue_vector_settings(tmp_path_factory):
    """VectorSettings of a store built from the real catalogue fixture (320 books, the real local model).

    Made once under var/test_vector_db (the first run imports the bundled store, VECTOR_DB_SEED, with no
    embedding; later runs find it up to date), under a file lock so that concurrent runs never build it twice at once, then copied
    into a directory of this run (of this xdist worker): no two runs share an open store.
    """
    from django.conf import settings

    from agent.embeddings import get_embedder
    from agent.vector_build import build_vector_db
    from apps.libros.catalogue import libro_document
    from apps.libros.models import Libro

    cache = REPO / "var" / "test_vector_db"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with (REPO / "var" / "test_vector_db.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        vector = dataclasses.replace(
            settings.VECTOR, dir=cache, manifest_path=cache / "manifest.json", url=None, dataset_path=None
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
        directory = tmp_path_factory.mktemp("vector") / "store"
        shutil.copytree(cache, directory)
    return dataclasses.replace(vector, dir=directory, manifest_path=directory / "manifest.json")


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
