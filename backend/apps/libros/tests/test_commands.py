"""The catalogue selector and the vector store commands: build, import, search, synthetic catalogue."""

from __future__ import annotations

import dataclasses
import json
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command

from agent.datasets import load_dataset
from agent.embeddings import get_embedder
from agent.vector_build import build_vector_db
from agent.vector_store import release_client
from apps.libros.catalogue import libro_document, libro_documents
from apps.libros.models import Libro

MINI = Path(__file__).parent / "fixtures" / "libros_mini.json"


def mini_libros() -> list[Libro]:
    """The mini fixture as unsaved rows (no database needed to build a store from it)."""
    return [Libro(pk=row["pk"], **row["fields"]) for row in json.loads(MINI.read_text())]


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def vector(settings, tmp_path):
    """An empty store location for this test, with the local model."""
    directory = tmp_path / "vector_db"
    settings.VECTOR = dataclasses.replace(
        settings.VECTOR,
        dir=directory,
        manifest_path=directory / "manifest.json",
        url=None,
        dataset_path=None,
        embeddings_provider="local",
        embeddings_model="multilingual-e5-small-q4",
    )
    yield settings.VECTOR
    release_client(settings.VECTOR)


@pytest.fixture(scope="module")
def mini_store(tmp_path_factory):
    """A store built once for the module from the 12 mini books, with the real model."""
    directory = tmp_path_factory.mktemp("mini") / "vector_db"
    vector = dataclasses.replace(
        django_settings.VECTOR,
        dir=directory,
        manifest_path=directory / "manifest.json",
        url=None,
        embeddings_provider="local",
        embeddings_model="multilingual-e5-small-q4",
    )
    documents = [libro_document(libro) for libro in mini_libros()]
    build_vector_db(documents, settings=vector, embedder=get_embedder(vector), source="test", progress=False)
    yield vector
    release_client(vector)


@pytest.fixture
def searchable(settings, mini_store):
    settings.VECTOR = mini_store
    return mini_store


@pytest.fixture
def catalogue(db):
    call_command("loaddata", str(MINI), verbosity=0)


def test_libro_documents_maps_rows(catalogue):
    documents = libro_documents()
    assert [doc.id for doc in documents] == [str(i) for i in range(1, 13)]
    hobbit = documents[6]
    assert hobbit.text == Libro.objects.get(pk=7).as_document_text()
    assert hobbit.metadata == {
        "title": "The Hobbit",
        "author": "J. R. R. Tolkien",
        "year": 1937,
        "language": "en",
        "genres": ["fantasy", "children", "adventure"],
        "pages": hobbit.metadata["pages"],
        "synopsis": Libro.objects.get(pk=7).synopsis,
    }
    assert [doc.id for doc in libro_documents(Libro.objects.filter(language="es"))] == [
        "1",
        "2",
        "3",
        "4",
        "5",
    ]


def test_build_from_the_table_then_only_the_differences(vector, catalogue):
    # Given the 12 books; when built
    out = run("build_vector_db")
    manifest = json.loads(vector.manifest_path.read_text())
    assert out.startswith("full build of 12 documents")
    assert (manifest["dataset_source"], manifest["document_count"], manifest["embedding_dim"]) == (
        "table:libros.libro",
        12,
        384,
    )
    # When one book changes and one is deleted, and the command runs again
    Libro.objects.filter(pk=8).update(
        synopsis="A desert planet, giant sandworms and a spice that everyone wants."
    )
    Libro.objects.filter(pk=12).delete()
    out = run("build_vector_db")
    # Then only the difference was applied
    assert "incremental build of 11 documents" in out
    assert "(added 0, updated 1, deleted 1, unchanged 10)" in out


def test_build_from_a_dataset_exports_and_imports_a_zip(vector, tmp_path, settings):
    dataset = tmp_path / "dataset.json"
    dataset.write_text(
        json.dumps([{"id": "a", "text": "Bread baking at home."}, {"id": "b", "text": "Bicycle repair."}])
    )
    out = run("build_vector_db", "--dataset", str(dataset), "--zip", str(tmp_path / "v.zip"))
    assert "full build of 2 documents" in out and f"exported {tmp_path / 'v.zip'}" in out
    assert json.loads(vector.manifest_path.read_text())["dataset_source"] == f"file:{dataset}"
    # When imported into another location
    other = tmp_path / "restored"
    settings.VECTOR = dataclasses.replace(vector, dir=other, manifest_path=other / "manifest.json")
    out = run("import_vector_db", str(tmp_path / "v.zip"))
    assert out.startswith("imported 2 documents (built ") and str(other) in out
    assert json.loads(run("vector_search", "bicycle", "--k", "1", "--json"))[0]["id"] == "b"
    release_client(settings.VECTOR)


def test_malformed_dataset_is_a_command_error_naming_the_item(vector, tmp_path):
    dataset = tmp_path / "bad.json"
    dataset.write_text(json.dumps([{"text": "fine"}, {"id": "x"}]))
    with pytest.raises(CommandError, match=r"item 1: needs a non-empty string `text` or `page_content`"):
        run("build_vector_db", "--dataset", str(dataset))
    assert not vector.dir.exists()


def test_empty_catalogue_is_a_command_error(vector, db):
    with pytest.raises(CommandError, match="the catalogue is empty"):
        run("build_vector_db")


def test_import_of_a_missing_or_bad_zip_is_a_command_error(vector, tmp_path):
    with pytest.raises(CommandError, match="No such file"):
        run("import_vector_db", str(tmp_path / "nope.zip"))
    (tmp_path / "junk.zip").write_text("not a zip")
    with pytest.raises(CommandError, match="Cannot import"):
        run("import_vector_db", str(tmp_path / "junk.zip"))


def test_vector_search_prints_json_hits(searchable):
    hits = json.loads(
        run("vector_search", "a hobbit, a wizard and a dragon's treasure", "--k", "3", "--json")
    )
    assert len(hits) == 3
    assert all(set(hit) == {"id", "title", "author", "score"} for hit in hits)
    assert hits[0] == {
        "id": "7",
        "title": "The Hobbit",
        "author": "J. R. R. Tolkien",
        "score": hits[0]["score"],
    }
    assert 0 < hits[0]["score"] <= 1
    # The same query gives the same answer
    assert (
        json.loads(run("vector_search", "a hobbit, a wizard and a dragon's treasure", "--k", "3", "--json"))
        == hits
    )


def test_vector_search_filters(searchable):
    spanish = json.loads(run("vector_search", "una novela", "--k", "12", "--json", "--language", "es"))
    assert {hit["id"] for hit in spanish} == {"1", "2", "3", "4", "5"}
    fantasy = json.loads(run("vector_search", "una novela", "--k", "12", "--json", "--genre", "fantasy"))
    assert {hit["id"] for hit in fantasy} == {"7", "11"}
    years = json.loads(
        run("vector_search", "a novel", "--k", "12", "--json", "--year-min", "1900", "--year-max", "1960")
    )
    assert {hit["id"] for hit in years} == {"4", "7", "11"}


def test_vector_search_text_output(searchable):
    out = run("vector_search", "whale hunt at sea", "--k", "2")
    assert out.splitlines()[0].endswith("[6] Moby-Dick (Herman Melville)")
    assert len(out.splitlines()) == 2


def test_vector_search_exact_uses_the_table_without_a_store(vector, catalogue):
    hits = json.loads(run("vector_search", "PARAMO", "--json", "--exact"))
    assert [hit["id"] for hit in hits] == ["4"]
    assert hits[0]["title"] == "Pedro Páramo"


def test_vector_search_without_a_store_is_a_command_error(vector, db):
    with pytest.raises(CommandError, match="no vector store at"):
        run("vector_search", "anything")


def test_generate_catalogue_is_reproducible(tmp_path, db):
    run("generate_catalogue", "--count", "50", "--seed", "7", "--out", str(tmp_path / "a.json"))
    run("generate_catalogue", "--count", "50", "--seed", "7", "--out", str(tmp_path / "b.json"))
    run("generate_catalogue", "--count", "50", "--seed", "8", "--out", str(tmp_path / "c.json"))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.json").read_bytes() != (tmp_path / "c.json").read_bytes()
    documents = load_dataset(tmp_path / "a.json")
    assert len(documents) == 50 and documents[0].id == "syn-0"
    assert {doc.metadata["language"] for doc in documents} == {"en", "es"}


def test_build_before_migrate_says_what_to_run_instead_of_a_traceback(tmp_path):
    """A fresh clone's first command is sometimes build_vector_db: an empty database is a clear refusal."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}",
        "VAR_DIR": str(tmp_path),
        "VECTOR_DB_DIR": str(tmp_path / "vector_db"),
        "VECTOR_DB_MANIFEST": str(tmp_path / "vector_db" / "manifest.json"),
        "VECTOR_DATASET_PATH": "",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "build_vector_db", "--no-progress"],
        cwd=django_settings.BACKEND_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "no catalogue table (libros_libro) yet: run `manage.py migrate`" in result.stderr
    assert not (tmp_path / "vector_db" / "manifest.json").exists()
