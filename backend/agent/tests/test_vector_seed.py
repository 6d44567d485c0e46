"""The bundled store (VECTOR_DB_SEED): imported instead of embedding when it fits, rebuilt when it does not;
checksums verified; and the "being built" state that readers report while a build runs."""

from __future__ import annotations

import json
import os
import time
import zipfile

import pytest

from agent.errors import VectorStoreUnavailable
from agent.tests.vector_helpers import CountingEmbedder, FakeEmbedder, book_documents, vector_settings
from agent.vector_build import build_vector_db, export_zip, import_zip
from agent.vector_store import (
    BUILD_STATUS_FILE,
    BUILD_STATUS_STALE_SEC,
    VectorStore,
    open_store,
    release_client,
)


def build(docs, settings, embedder, **kwargs):
    return build_vector_db(
        docs, settings=settings, embedder=embedder, source="test", progress=False, **kwargs
    )


@pytest.fixture
def seed(tmp_path):
    """(path, manifest) of a seed zip exported from a store of all the test books, built with FakeEmbedder."""
    source = vector_settings(tmp_path / "source")
    manifest = build(book_documents(), source, FakeEmbedder())
    path = export_zip(source, tmp_path / "seed" / "vector_db.zip")
    release_client(source)
    return path, manifest


@pytest.fixture
def fresh(tmp_path, seed):
    """Settings of a fresh clone: no store yet, VECTOR_DB_SEED pointing at the seed."""
    settings = vector_settings(tmp_path / "fresh", VECTOR_DB_SEED=str(seed[0]))
    yield settings
    release_client(settings)


def test_a_matching_seed_is_imported_and_nothing_is_embedded(fresh, seed):
    counting = CountingEmbedder(FakeEmbedder())
    manifest = build(book_documents(), fresh, counting)
    assert manifest["outcome"] == "imported"
    assert counting.documents_embedded == 0
    assert manifest["build_id"] == seed[1]["build_id"]
    store = open_store(fresh, embedder=FakeEmbedder())
    assert store.count() == len(book_documents())
    assert "files" not in store.manifest  # the checksums are the zip's, not the live store's
    assert not (fresh.dir / BUILD_STATUS_FILE).exists()
    # And the next start finds the store up to date: still nothing embedded
    again = build(book_documents(), fresh, counting)
    assert (again["outcome"], again["build_id"], counting.documents_embedded) == (
        "up_to_date",
        seed[1]["build_id"],
        0,
    )


def test_a_seed_of_other_data_is_imported_then_only_the_differences_are_embedded(fresh, seed):
    docs = book_documents()
    changed = [*docs[:-1], type(docs[-1])(id="new", text="A brand new book about lighthouses.", metadata={})]
    counting = CountingEmbedder(FakeEmbedder())
    manifest = build(changed, fresh, counting)
    assert manifest["outcome"] == "built"
    assert counting.documents_embedded == 1
    assert (manifest["incremental"], manifest["added"], manifest["deleted"]) == (True, 1, 1)
    assert manifest["build_id"] != seed[1]["build_id"]


def test_a_seed_built_with_another_model_is_not_imported(tmp_path, seed):
    settings = vector_settings(tmp_path / "fresh", VECTOR_DB_SEED=str(seed[0]))
    counting = CountingEmbedder(FakeEmbedder(name="other-model"))
    manifest = build(book_documents(), settings, counting)
    assert manifest["outcome"] == "built"
    assert (manifest["incremental"], counting.documents_embedded) == (False, len(book_documents()))
    assert manifest["embedding_model"] == "other-model"
    release_client(settings)


def _tamper(zip_path, out_path, member, change):
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(out_path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, change(data) if info.filename == member else data)
    return out_path


def test_a_seed_whose_files_do_not_match_their_checksums_is_rebuilt(tmp_path, seed):
    bad = _tamper(
        seed[0],
        tmp_path / "bad.zip",
        "vector_db/chroma.sqlite3",
        lambda data: data[:-1] + bytes([data[-1] ^ 1]),
    )
    settings = vector_settings(tmp_path / "fresh", VECTOR_DB_SEED=str(bad))
    with pytest.raises(ValueError, match="checksum mismatch: chroma.sqlite3"):
        import_zip(bad, settings, embedder=FakeEmbedder())
    counting = CountingEmbedder(FakeEmbedder())
    manifest = build(book_documents(), settings, counting)
    assert (manifest["outcome"], manifest["incremental"]) == ("built", False)
    assert counting.documents_embedded == len(book_documents())
    release_client(settings)


def test_a_zip_without_checksums_is_refused(tmp_path, seed):
    def strip(data):
        manifest = json.loads(data)
        del manifest["files"]
        return json.dumps(manifest).encode()

    bare = _tamper(seed[0], tmp_path / "bare.zip", "vector_db/manifest.json", strip)
    with pytest.raises(ValueError, match="lists no file checksums"):
        import_zip(bare, vector_settings(tmp_path / "other"), embedder=FakeEmbedder())


def test_an_extra_file_in_the_zip_is_refused(tmp_path, seed):
    extra = tmp_path / "extra.zip"
    _tamper(seed[0], extra, "", lambda data: data)
    with zipfile.ZipFile(extra, "a") as archive:
        archive.writestr("vector_db/planted.bin", b"x")
    with pytest.raises(ValueError, match="not listed in the manifest: planted.bin"):
        import_zip(extra, vector_settings(tmp_path / "other"), embedder=FakeEmbedder())


def test_a_usable_store_is_kept_rather_than_replaced_by_the_seed(tmp_path, seed):
    settings = vector_settings(tmp_path / "live", VECTOR_DB_SEED=str(seed[0]))
    mine = build(book_documents()[:4], settings, FakeEmbedder())
    manifest = build(book_documents()[:4], settings, CountingEmbedder(FakeEmbedder()))
    assert (manifest["outcome"], manifest["build_id"]) == ("up_to_date", mine["build_id"])
    release_client(settings)


def test_the_export_is_reproducible(tmp_path, seed):
    source = vector_settings(tmp_path / "source")
    again = export_zip(source, tmp_path / "again.zip")
    assert again.read_bytes() == seed[0].read_bytes()


class ProbingEmbedder(FakeEmbedder):
    """Before each batch, tries to open the store being built, as a worker would, and keeps the answer."""

    def __init__(self, settings):
        super().__init__()
        self.settings = settings
        self.seen: list[str] = []

    def embed_documents(self, texts):
        try:
            VectorStore(settings=self.settings, embedder=FakeEmbedder())
            self.seen.append("opened")
        except VectorStoreUnavailable as exc:
            self.seen.append(exc.message)
        return super().embed_documents(texts)


def test_readers_say_the_store_is_being_built_with_its_progress(tmp_path):
    settings = vector_settings(tmp_path, EMBEDDINGS_BATCH_SIZE="4")
    probe = ProbingEmbedder(settings)
    build(book_documents(), settings, probe)
    total = len(book_documents())
    assert probe.seen == [
        f"vector store is being built, {done}/{total} documents" for done in range(0, total, 4)
    ]
    assert not (settings.dir / BUILD_STATUS_FILE).exists()
    assert open_store(settings, embedder=FakeEmbedder()).count() == total
    release_client(settings)


def test_a_failed_first_build_leaves_no_status_and_no_directory(tmp_path):
    settings = vector_settings(tmp_path)

    class Broken(FakeEmbedder):
        def embed_documents(self, texts):
            raise RuntimeError("the model crashed")

    with pytest.raises(RuntimeError):
        build(book_documents(), settings, Broken())
    assert not settings.dir.exists()
    with pytest.raises(VectorStoreUnavailable, match="no vector store at .*run `manage.py build_vector_db`"):
        VectorStore(settings=settings, embedder=FakeEmbedder())


def test_a_stale_status_from_a_dead_build_is_ignored(tmp_path):
    settings = vector_settings(tmp_path)
    settings.dir.mkdir()
    status = settings.dir / BUILD_STATUS_FILE
    status.write_text(json.dumps({"phase": "embedding", "done": 3, "total": 10}))
    with pytest.raises(VectorStoreUnavailable, match="being built, 3/10 documents"):
        VectorStore(settings=settings, embedder=FakeEmbedder())
    old = time.time() - BUILD_STATUS_STALE_SEC - 5
    os.utime(status, (old, old))
    with pytest.raises(VectorStoreUnavailable, match="no vector store at"):
        VectorStore(settings=settings, embedder=FakeEmbedder())
