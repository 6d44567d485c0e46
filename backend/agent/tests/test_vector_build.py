"""`build_vector_db()`: manifest, incremental rebuilds, malformed datasets, crash safety, zip export/import."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from agent import atomic_swap, datasets, vector_store
from agent.datasets import DatasetError, load_dataset
from agent.embeddings import LocalE5Embedder
from agent.errors import VectorStoreUnavailable
from agent.tests.vector_helpers import (
    CountingEmbedder,
    FakeEmbedder,
    book_documents,
    no_network,
    vector_settings,
)
from agent.types import Document
from agent.vector_build import build_vector_db, export_zip, import_zip
from agent.vector_store import VectorStore, open_store, release_client, search_ef


@pytest.fixture
def vsettings(tmp_path):
    vsettings = vector_settings(tmp_path)
    yield vsettings
    release_client(vsettings)


def build(docs, vsettings, embedder, **kwargs):
    """The manifest of the build (without `outcome`, which only the call returns)."""
    manifest = build_vector_db(
        docs, settings=vsettings, embedder=embedder, source="test", progress=False, **kwargs
    )
    manifest.pop("outcome")
    return manifest


def leftovers(vsettings):
    """Temporary or backup directories next to the store (there must be none after any build)."""
    return sorted(
        p.name
        for p in vsettings.dir.parent.iterdir()
        if p.name.startswith(f".{vsettings.dir.name}.") and p.is_dir()
    )


def test_manifest_describes_the_build(vsettings):
    docs = book_documents()
    manifest = build(docs, vsettings, FakeEmbedder())
    assert json.loads(vsettings.manifest_path.read_text()) == manifest
    assert vsettings.manifest_path == vsettings.dir / "manifest.json"
    expected = {
        "format": "librarian-vector-db",
        "metadata_schema": 1,
        "collection": "libros",
        "document_count": 10,
        "distance": "cosine",
        "embedding_provider": "local",
        "embedding_model": "fake-bow",
        "embedding_version": "1",
        "embedding_dim": 64,
        "dataset_source": "test",
        "dataset_sha256": datasets.dataset_sha256(docs),
        "chromadb_version": "1.5.9",
        "incremental": False,
        "added": 10,
        "updated": 0,
        "deleted": 0,
        "unchanged": 0,
    }
    assert {key: manifest[key] for key in expected} == expected
    assert len(manifest["build_id"]) == 32
    assert manifest["built_at"].endswith("+00:00")
    assert 0 < manifest["build_seconds"] < 60
    assert leftovers(vsettings) == []


def test_a_first_build_does_not_tell_the_user_to_run_a_build(vsettings, caplog):
    caplog.set_level(logging.INFO, logger="agent.vector_build")
    build(book_documents(), vsettings, FakeEmbedder())
    assert "no store yet at" in caplog.text
    assert "build_vector_db`" not in caplog.text  # the store's "run `manage.py build_vector_db`" hint


def test_dataset_hash_does_not_depend_on_order():
    docs = book_documents()
    assert datasets.dataset_sha256(docs) == datasets.dataset_sha256(list(reversed(docs)))


def test_rebuild_of_an_unchanged_dataset_embeds_nothing(vsettings):
    build(book_documents(), vsettings, FakeEmbedder())
    counting = CountingEmbedder(FakeEmbedder())
    manifest = build(book_documents(), vsettings, counting)
    assert counting.documents_embedded == 0
    assert (
        manifest["incremental"],
        manifest["added"],
        manifest["updated"],
        manifest["deleted"],
        manifest["unchanged"],
    ) == (
        True,
        0,
        0,
        0,
        10,
    )


def _set_ef_search(vsettings, ef_search):
    """Give the store at `vsettings` another `ef_search`, as a store built before builds set it had."""
    import chromadb

    release_client(vsettings)
    client = chromadb.PersistentClient(path=str(vsettings.dir))
    try:
        collection = client.get_collection(vsettings.collection, embedding_function=None)
        collection.modify(configuration={"hnsw": {"ef_search": ef_search}})
    finally:
        client.close()


@pytest.mark.parametrize(
    ("count", "ef_search"), [(0, 100), (10, 100), (320, 320), (2_000, 2_000), (50_000, 2_000)]
)
def test_the_search_visits_the_whole_store_up_to_2000_records(count, ef_search):
    assert search_ef(count) == ef_search


def test_a_build_sizes_the_search_to_the_store(vsettings, monkeypatch):
    # Given stores of 10 records searching at least 4 (the floor lowered so that 10 records are above it)
    monkeypatch.setattr(vector_store, "DEFAULT_EF_SEARCH", 4)
    build(book_documents(), vsettings, FakeEmbedder())
    assert open_store(vsettings, embedder=FakeEmbedder()).ef_search == 10
    # When three books go, the search follows the store's size
    build(book_documents()[:7], vsettings, FakeEmbedder())
    assert open_store(vsettings, embedder=FakeEmbedder()).ef_search == 7


def test_a_store_built_before_the_search_was_sized_gets_it_without_embedding(vsettings, caplog):
    # Given a store of these documents whose search visits fewer records than the build sets
    first = build(book_documents(), vsettings, FakeEmbedder())
    _set_ef_search(vsettings, 50)
    with caplog.at_level(logging.WARNING, logger="agent.vector_store"):
        assert open_store(vsettings, embedder=FakeEmbedder()).ef_search == 50
    # Then a reader says so, and what fixes it
    assert "searches with ef_search 50 for 10 records (builds set 100)" in caplog.text
    assert "run `manage.py build_vector_db`" in caplog.text
    caplog.clear()
    # When built again, the store is not up to date: it is rebuilt, with nothing embedded
    counting = CountingEmbedder(FakeEmbedder())
    again = build_vector_db(
        book_documents(), settings=vsettings, embedder=counting, source="test", progress=False
    )
    assert (again["outcome"], again["incremental"], again["unchanged"], counting.documents_embedded) == (
        "built",
        True,
        10,
        0,
    )
    assert again["build_id"] != first["build_id"]
    with caplog.at_level(logging.WARNING, logger="agent.vector_store"):
        assert open_store(vsettings, embedder=FakeEmbedder()).ef_search == search_ef(10)
    assert "ef_search" not in caplog.text
    # And the next build finds it up to date
    assert (
        build_vector_db(
            book_documents(), settings=vsettings, embedder=counting, source="test", progress=False
        )["outcome"]
        == "up_to_date"
    )


def test_an_imported_zip_from_before_gets_the_sized_search(tmp_path, vsettings):
    build(book_documents(), vsettings, FakeEmbedder())
    _set_ef_search(vsettings, 50)
    out = export_zip(vsettings, tmp_path / "out" / "vector_db.zip")
    other = vector_settings(tmp_path / "other")
    import_zip(out, other, embedder=FakeEmbedder())
    assert open_store(other, embedder=FakeEmbedder()).ef_search == search_ef(10)
    release_client(other)


def test_changed_dataset_upserts_and_deletes_exactly_the_differences(vsettings):
    build(book_documents(), vsettings, FakeEmbedder())
    # Given: book 4 changed, book 6 removed, book 11 added
    docs = [doc for doc in book_documents() if doc.id != "6"]
    docs[3] = dataclasses.replace(
        docs[3], text=docs[3].text + " Sandworms.", metadata={**docs[3].metadata, "pages": 999}
    )
    docs.append(
        Document(
            id="11",
            text="Pedro Páramo. Juan Rulfo. Comala.",
            metadata={"title": "Pedro Páramo", "language": "es"},
        )
    )
    counting = CountingEmbedder(FakeEmbedder())
    # When rebuilt
    manifest = build(docs, vsettings, counting)
    # Then only the two new texts were embedded, one id deleted
    assert counting.documents_embedded == 2
    assert (manifest["added"], manifest["updated"], manifest["deleted"], manifest["unchanged"]) == (
        1,
        1,
        1,
        8,
    )
    store = open_store(vsettings, embedder=counting)
    assert store.count() == 10
    titles = {hit.id: hit for hit in store.retrieve("anything at all", 10)}
    assert "6" not in titles
    assert titles["4"].metadata["pages"] == 999
    assert titles["11"].title == "Pedro Páramo"


def test_force_and_model_change_rebuild_everything(vsettings):
    build(book_documents(), vsettings, FakeEmbedder())
    forced = CountingEmbedder(FakeEmbedder())
    assert build(book_documents(), vsettings, forced, force=True)["incremental"] is False
    assert forced.documents_embedded == 10
    other = CountingEmbedder(FakeEmbedder(name="other-model", dim=32))
    manifest = build(book_documents(), vsettings, other)
    assert (manifest["incremental"], manifest["embedding_model"], manifest["embedding_dim"]) == (
        False,
        "other-model",
        32,
    )
    assert other.documents_embedded == 10


def test_build_from_a_generic_dataset(tmp_path, vsettings):
    path = tmp_path / "dataset.json"
    path.write_text(
        json.dumps(
            [
                {
                    "id": "a",
                    "text": "Sourdough bread and slow fermentation.",
                    "metadata": {"title": "Bread", "year": 2012},
                },
                {
                    "id": 7,
                    "page_content": "Repairing old bicycles at home.",
                    "metadata": {"tags": ["diy", "bikes"]},
                },
                {"text": "Growing tomatoes on a balcony."},
            ]
        )
    )
    docs = load_dataset(path)
    assert [doc.id for doc in docs] == [
        "a",
        "7",
        "sha-" + hashlib.sha256(b"Growing tomatoes on a balcony.").hexdigest()[:16],
    ]
    manifest = build(docs, vsettings, FakeEmbedder())
    assert manifest["document_count"] == 3
    hits = open_store(vsettings, embedder=FakeEmbedder()).retrieve("bicycles repairing", 1)
    assert (hits[0].id, hits[0].title, hits[0].metadata["tags"]) == (
        "7",
        "Repairing old bicycles at home.",
        ["diy", "bikes"],
    )


MALFORMED = [
    ({"text": "not a list"}, None, "must hold a JSON list"),
    ([{"text": "ok"}, "just a string"], 1, "expected an object"),
    ([{"text": "ok"}, {"id": "x"}], 1, "needs a non-empty string `text` or `page_content`"),
    ([{"text": "   "}], 0, "needs a non-empty string"),
    ([{"text": "ok", "id": ["list"]}], 0, "`id` must be a non-empty string or an integer"),
    ([{"text": "ok", "metadata": "tags"}], 0, "`metadata` must be an object"),
    (
        [{"text": "a", "id": 1}, {"text": "b", "id": "2"}, {"text": "c", "id": "1"}],
        2,
        "duplicate id '1' (first at item 0)",
    ),
    (
        [{"text": "a", "metadata": {"nested": {"x": 1}}}],
        0,
        "metadata 'nested': unsupported value of type dict",
    ),
    (
        [{"text": "a", "metadata": {"mixed": [1, "a"]}}],
        0,
        "metadata 'mixed': a list must hold values of one type",
    ),
    ([{"text": "a", "metadata": {"_content_hash": "x"}}], 0, "metadata '_content_hash': keys must be"),
]


@pytest.mark.parametrize(("content", "index", "problem"), MALFORMED)
def test_malformed_dataset_names_the_item_and_leaves_the_store_alone(
    tmp_path, vsettings, content, index, problem
):
    # Given a working store
    before = build(book_documents(), vsettings, FakeEmbedder())
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    # When a malformed dataset is loaded
    with pytest.raises(DatasetError) as caught:
        build(load_dataset(path), vsettings, FakeEmbedder())
    # Then the error names the item and the problem, and the old store still opens, unchanged
    assert caught.value.index == index
    assert problem in str(caught.value)
    if index is not None:
        assert str(caught.value).startswith(f"item {index}: ")
    assert VectorStore(settings=vsettings, embedder=FakeEmbedder()).manifest["build_id"] == before["build_id"]
    assert leftovers(vsettings) == []


def test_invalid_json_is_reported(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("[{]")
    with pytest.raises(DatasetError, match="is not valid JSON"):
        load_dataset(path)


def test_a_failure_mid_build_keeps_the_old_store(vsettings):
    before = build(book_documents(), vsettings, FakeEmbedder())

    class Failing(FakeEmbedder):
        def embed_documents(self, texts):
            raise RuntimeError("model crashed")

    changed = [dataclasses.replace(doc, text=doc.text + " v2") for doc in book_documents()]
    with pytest.raises(RuntimeError, match="model crashed"):
        build(changed, vsettings, Failing())
    assert VectorStore(settings=vsettings, embedder=FakeEmbedder()).manifest["build_id"] == before["build_id"]
    assert leftovers(vsettings) == []


def test_an_interrupted_swap_is_recovered(vsettings, monkeypatch):
    # Given a store, and a crash of the fallback swap between its two renames (target moved to the backup)
    before = build(book_documents(), vsettings, FakeEmbedder())
    backup = atomic_swap._backup_path(vsettings.dir)
    vsettings.dir.rename(backup)
    (vsettings.dir.parent / f".{vsettings.dir.name}.build-dead").mkdir()
    # When the next build runs (through the fallback path, as on a system without renameat2)
    monkeypatch.setattr(atomic_swap, "_exchange", lambda a, b: False)
    counting = CountingEmbedder(FakeEmbedder())
    after = build(book_documents()[:-1], vsettings, counting)  # one book fewer: a new build is swapped in
    # Then the old store was restored and reused (nothing re-embedded), and no leftovers remain
    assert after["incremental"] is True and counting.documents_embedded == 0
    assert (after["deleted"], after["unchanged"]) == (1, len(book_documents()) - 1)
    assert after["build_id"] != before["build_id"]
    assert leftovers(vsettings) == []


def test_files_kept_beside_the_store_survive_a_full_rebuild(vsettings):
    build(book_documents(), vsettings, FakeEmbedder())
    (vsettings.dir / "README.md").write_text("kept")
    build(book_documents(), vsettings, FakeEmbedder(), force=True)
    assert (vsettings.dir / "README.md").read_text() == "kept"


def test_manifest_outside_the_store_is_written_too(tmp_path):
    vsettings = vector_settings(tmp_path, VECTOR_DB_MANIFEST=str(tmp_path / "elsewhere" / "manifest.json"))
    manifest = build(book_documents(), vsettings, FakeEmbedder())
    assert json.loads((tmp_path / "elsewhere" / "manifest.json").read_text()) == manifest
    assert json.loads((vsettings.dir / "manifest.json").read_text()) == manifest
    release_client(vsettings)


def test_export_and_import_round_trip(tmp_path, vsettings):
    manifest = build(book_documents(), vsettings, FakeEmbedder())
    out = export_zip(vsettings, tmp_path / "out" / "vector_db.zip")
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
    assert "vector_db/manifest.json" in names and "vector_db/chroma.sqlite3" in names
    assert all(name.startswith("vector_db/") for name in names)
    # When imported into another location
    other = vector_settings(tmp_path / "other")
    imported = import_zip(out, other, embedder=FakeEmbedder())
    # Then it is the same build and answers the same
    assert imported == manifest
    expected = open_store(vsettings, embedder=FakeEmbedder()).retrieve("dragon wizard", 3)
    assert open_store(other, embedder=FakeEmbedder()).retrieve("dragon wizard", 3) == expected
    release_client(other)


def test_import_replaces_a_live_store_atomically(tmp_path, vsettings):
    first = build(book_documents()[:3], vsettings, FakeEmbedder())
    source = vector_settings(tmp_path / "source")
    second = build(book_documents(), source, FakeEmbedder())
    release_client(source)
    export_zip(source, tmp_path / "v.zip")
    open_store(vsettings, embedder=FakeEmbedder())  # a reader has the old store open
    (vsettings.dir / "README.md").write_text("kept")
    assert (
        import_zip(tmp_path / "v.zip", vsettings, embedder=FakeEmbedder())["build_id"]
        == second["build_id"]
        != first["build_id"]
    )
    assert open_store(vsettings, embedder=FakeEmbedder()).count() == 10
    assert (vsettings.dir / "README.md").read_text() == "kept"
    assert leftovers(vsettings) == []


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (
            {"vector_db/manifest.json": "{}", "vector_db/chroma.sqlite3": "", "../evil.txt": "x"},
            "unsafe path",
        ),
        ({"/abs/manifest.json": "{}"}, "unsafe path"),
        ({"vector_db/chroma.sqlite3": ""}, "no vector_db/manifest.json"),
        ({"a/manifest.json": "{}", "b/chroma.sqlite3": ""}, "must hold one folder"),
    ],
)
def test_unsafe_or_malformed_zips_are_refused(tmp_path, vsettings, members, message):
    before = build(book_documents(), vsettings, FakeEmbedder())
    with pytest.raises(ValueError, match=message):
        import_zip(_zip(tmp_path / "bad.zip", members), vsettings, embedder=FakeEmbedder())
    assert not (tmp_path / "evil.txt").exists()
    assert VectorStore(settings=vsettings, embedder=FakeEmbedder()).manifest["build_id"] == before["build_id"]
    assert leftovers(vsettings) == []


def test_a_zip_built_with_another_model_is_refused(tmp_path, vsettings):
    before = build(book_documents(), vsettings, FakeEmbedder())
    export_zip(vsettings, tmp_path / "v.zip")
    with pytest.raises(VectorStoreUnavailable, match="configured 'other-model'"):
        import_zip(tmp_path / "v.zip", vsettings, embedder=FakeEmbedder(name="other-model"))
    assert VectorStore(settings=vsettings, embedder=FakeEmbedder()).manifest["build_id"] == before["build_id"]


def test_export_without_a_store_fails(vsettings, tmp_path):
    with pytest.raises(VectorStoreUnavailable, match="no built vector store"):
        export_zip(vsettings, tmp_path / "v.zip")


def test_real_model_build_attempts_no_download(vsettings):
    # The test that fails if anything (model, telemetry, Chroma's default embedding function) reaches out.
    with no_network() as attempts:
        manifest = build(book_documents()[:4], vsettings, LocalE5Embedder())
        hits = open_store(vsettings, embedder=LocalE5Embedder()).retrieve("un mago y un dragón", 2)
    assert attempts == []
    assert (manifest["embedding_model"], manifest["embedding_dim"]) == ("multilingual-e5-small-q4", 384)
    assert hits[0].id == "3"


def test_wrong_vector_shape_from_the_embedder_fails_the_build(vsettings):
    class Short(FakeEmbedder):
        def embed_documents(self, texts):
            return np.zeros((len(texts) - 1, self.dim), dtype=np.float32)

    with pytest.raises(ValueError, match="embedder returned shape"):
        build(book_documents(), vsettings, Short())
    assert not vsettings.dir.exists()


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    """A real Chroma server (`chroma run`, shipped with the chromadb package) on a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = tmp_path_factory.mktemp("chroma-server")
    chroma = Path(sys.executable).parent / "chroma"
    process = subprocess.Popen(
        [str(chroma), "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the Chroma server did not start") from None
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_server_mode_builds_incrementally_and_retrieves(tmp_path, chroma_server):
    # Given VECTOR_DB_URL pointing at a Chroma server
    server = vector_settings(tmp_path, VECTOR_DB_URL=chroma_server)
    first = build(book_documents(), server, FakeEmbedder())
    # Then the collection carries the manifest (workers on other machines have no file), and retrieval works
    store = open_store(server, embedder=FakeEmbedder())
    assert store.manifest == first == json.loads(server.manifest_path.read_text())
    assert store.count() == 10
    assert store.retrieve("a hobbit a wizard and a dragon", 1)[0].id == "3"
    # When the dataset changes, only the differences are embedded (unchanged vectors are copied over)
    docs = book_documents()[:-1]
    docs[0] = dataclasses.replace(docs[0], text=docs[0].text + " Ahab.")
    counting = CountingEmbedder(FakeEmbedder())
    second = build(docs, server, counting)
    assert counting.documents_embedded == 1
    assert (second["incremental"], second["updated"], second["deleted"], second["unchanged"]) == (
        True,
        1,
        1,
        8,
    )
    release_client(server)
    reopened = open_store(server, embedder=FakeEmbedder())
    assert reopened.manifest["build_id"] == second["build_id"] and reopened.count() == 9
    release_client(server)


def test_server_mode_without_the_collection_is_unavailable(tmp_path, chroma_server):
    server = vector_settings(tmp_path, VECTOR_DB_URL=chroma_server, VECTOR_DB_COLLECTION="missing-collection")
    with pytest.raises(VectorStoreUnavailable, match="cannot open collection 'missing-collection'"):
        open_store(server, embedder=FakeEmbedder())
    release_client(server)
