"""Opening a store (manifest checks) and `retrieve()`: scores, metadata, filters, determinism, one client per process."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest

from agent.errors import InvalidQuery, VectorStoreUnavailable
from agent.tests.vector_helpers import FakeEmbedder, book_documents, vector_settings
from agent.types import Document, Filters
from agent.vector_build import build_vector_db
from agent.vector_store import VectorStore, open_client, open_store, release_client, where_clause


@pytest.fixture
def built(tmp_path):
    settings = vector_settings(tmp_path)
    embedder = FakeEmbedder()
    manifest = build_vector_db(
        book_documents(), settings=settings, embedder=embedder, source="test", progress=False
    )
    yield settings, embedder, manifest
    release_client(settings)


def _edit_manifest(settings, **changes):
    data = json.loads(settings.manifest_path.read_text())
    data.update(changes)
    settings.manifest_path.write_text(json.dumps(data))


def test_missing_store_is_unavailable_and_not_created(tmp_path):
    settings = vector_settings(tmp_path)
    with pytest.raises(VectorStoreUnavailable, match="no vector store at"):
        open_store(settings, embedder=FakeEmbedder())
    # A PersistentClient would have created an empty store; the check comes first.
    assert not settings.dir.exists()


def test_missing_manifest_is_unavailable(built):
    settings, embedder, _ = built
    settings.manifest_path.unlink()
    with pytest.raises(VectorStoreUnavailable, match="no manifest"):
        VectorStore(settings=settings, embedder=embedder)


def test_corrupt_manifest_is_unavailable(built):
    settings, embedder, _ = built
    settings.manifest_path.write_text("{not json")
    with pytest.raises(VectorStoreUnavailable, match="unreadable"):
        VectorStore(settings=settings, embedder=embedder)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"document_count": 99}, "99 documents in the manifest, 10 in the collection"),
        ({"build_id": "someone-else"}, "build 'someone-else' in the manifest"),
        ({"metadata_schema": 0}, "metadata schema 0"),
        ({"distance": "l2"}, "distance 'l2'"),
    ],
)
def test_manifest_mismatch_is_unavailable(built, changes, message):
    settings, embedder, _ = built
    _edit_manifest(settings, **changes)
    with pytest.raises(VectorStoreUnavailable, match=message):
        VectorStore(settings=settings, embedder=embedder)


def test_other_embedding_model_is_unavailable(built):
    settings, _, _ = built
    with pytest.raises(VectorStoreUnavailable, match="built with 'fake-bow'.*configured 'other-model'"):
        VectorStore(settings=settings, embedder=FakeEmbedder(name="other-model"))
    with pytest.raises(VectorStoreUnavailable, match="dimension 64, the model gives 32"):
        VectorStore(settings=settings, embedder=FakeEmbedder(dim=32))


def test_other_collection_name_is_unavailable(built, tmp_path):
    settings, embedder, _ = built
    other = dataclasses.replace(settings, collection="otros")
    with pytest.raises(VectorStoreUnavailable, match="cannot open collection 'otros'"):
        VectorStore(settings=other, embedder=embedder)


def test_retrieve_returns_scored_hits_with_metadata(built):
    settings, embedder, _ = built
    hits = open_store(settings, embedder=embedder).retrieve("a hobbit a wizard and a dragon", 3)
    assert [hit.id for hit in hits][0] == "3"
    top = hits[0]
    assert (top.title, top.author, top.year) == ("The Hobbit", "J. R. R. Tolkien", 1937)
    assert top.metadata == {
        "genres": ["fantasy", "children"],
        "language": "en",
        "pages": 103,
        "synopsis": "A hobbit, a wizard and dwarves against a dragon.",
    }
    assert all(0.0 <= hit.score <= 1.0 for hit in hits)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    assert len(hits) == 3


def test_retrieve_is_deterministic_and_breaks_ties_by_id(tmp_path):
    # Given identical texts under ids 10, 2 and 33 (equal scores)
    settings = vector_settings(tmp_path)
    embedder = FakeEmbedder()
    docs = [Document(id=i, text="the same words", metadata={"title": f"T{i}"}) for i in ("10", "2", "33")]
    docs.append(Document(id="4", text="other words entirely", metadata={"title": "T4"}))
    build_vector_db(docs, settings=settings, embedder=embedder, source="test", progress=False)
    store = open_store(settings, embedder=embedder)
    # When the same query runs twice
    first = store.retrieve("the same words", 3)
    second = store.retrieve("the same words", 3)
    # Then the order is the same, ties in numeric id order
    assert [hit.id for hit in first] == ["2", "10", "33"]
    assert first == second
    release_client(settings)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(language="es"), {"2", "5", "7"}),
        (Filters(language="ES"), {"2", "5", "7"}),
        (Filters(genres=("fantasy",)), {"3", "10"}),
        (Filters(genres=("horror", "cooking")), {"6", "7"}),
        (Filters(year_min=1960, year_max=1970), {"2", "4", "10"}),
        (Filters(language="en", genres=("literary_fiction",), year_max=1890), {"1"}),
        (Filters(genres=("Science fiction",)), {"4"}),
        (Filters(language="fr"), set()),
    ],
)
def test_retrieve_filters(built, filters, expected):
    settings, embedder, _ = built
    hits = open_store(settings, embedder=embedder).retrieve("a story", 10, filters)
    assert {hit.id for hit in hits} == expected


def test_where_clause_shapes():
    assert where_clause(Filters()) is None
    assert where_clause(Filters(genres=("fantasy",))) == {"genres": {"$contains": "fantasy"}}
    assert where_clause(Filters(language="es", year_min=1900)) == {
        "$and": [{"language": {"$eq": "es"}}, {"year": {"$gte": 1900}}]
    }


def test_retrieve_rejects_bad_k_and_ignores_blank_queries(built):
    settings, embedder, _ = built
    store = open_store(settings, embedder=embedder)
    with pytest.raises(InvalidQuery):
        store.retrieve("dragons", 0)
    assert store.retrieve("   ", 5) == []
    assert store.count() == 10


def test_store_is_opened_once_and_reopened_after_a_rebuild(built):
    settings, embedder, manifest = built
    first = open_store(settings, embedder=embedder)
    assert open_store(settings, embedder=embedder) is first
    assert open_client(settings) is open_client(settings)
    # When the store is rebuilt (one book fewer), the next call sees the new build
    new = build_vector_db(
        book_documents()[:-1], settings=settings, embedder=embedder, source="test", progress=False
    )
    reopened = open_store(settings, embedder=embedder)
    assert reopened is not first
    assert reopened.manifest["build_id"] == new["build_id"] != manifest["build_id"]
    assert reopened.count() == 9


def test_concurrent_retrieval_from_many_threads(built):
    settings, embedder, _ = built
    # No result cache: every call goes to Chroma, from eight threads at once.
    store = VectorStore(settings=settings, embedder=embedder, result_cache_size=0)
    expected = [hit.id for hit in store.retrieve("wizard dragon", 5)]
    results: list[list[str]] = []

    def work() -> None:
        for _ in range(5):
            results.append([hit.id for hit in store.retrieve("wizard dragon", 5)])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 40


def test_generic_metadata_genre_as_a_string_is_filterable(tmp_path):
    settings = vector_settings(tmp_path)
    docs = [
        Document(id="a", text="dragons and castles", metadata={"genres": "Fantasy", "language": "EN"}),
        Document(id="b", text="dragons in space", metadata={"genres": ["science-fiction"]}),
    ]
    build_vector_db(docs, settings=settings, embedder=FakeEmbedder(), source="test", progress=False)
    store = open_store(settings, embedder=FakeEmbedder())
    fantasy = store.retrieve("dragons", 5, Filters(genres=("fantasy",), language="en"))
    assert [hit.id for hit in fantasy] == ["a"]
    hit = store.retrieve("dragons", 5, Filters(genres=("science fiction",)))[0]
    assert (hit.id, hit.metadata["genres"]) == ("b", ["science_fiction"])
    release_client(settings)


class CountingEmbedder(FakeEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.queries: list[str] = []

    def embed_query(self, text: str):
        self.queries.append(text)
        return super().embed_query(text)


def test_repeated_questions_are_answered_from_the_result_cache(built):
    settings, _, _ = built
    embedder = CountingEmbedder()
    store = VectorStore(settings=settings, embedder=embedder, result_cache_size=2)
    first = store.retrieve("wizard dragon", 3)
    again = store.retrieve("wizard dragon", 3)
    assert again == first and again is not first  # equal hits, a list of the caller's own
    again.clear()
    assert store.retrieve("wizard dragon", 3) == first  # clearing a returned list changes no cache
    assert embedder.queries == ["wizard dragon"]
    # k and filters are part of the question.
    assert len(store.retrieve("wizard dragon", 2)) == 2
    store.retrieve("wizard dragon", 3, Filters(language="es"))
    assert embedder.queries == ["wizard dragon"] * 3
    # Least recently used first out: the size-2 cache dropped ("wizard dragon", 3, no filters).
    store.retrieve("wizard dragon", 3)
    assert len(embedder.queries) == 4


def test_result_cache_can_be_disabled_and_dies_with_the_build(built):
    settings, _, _ = built
    embedder = CountingEmbedder()
    uncached = VectorStore(settings=settings, embedder=embedder, result_cache_size=0)
    uncached.retrieve("wizard dragon", 3)
    uncached.retrieve("wizard dragon", 3)
    assert len(embedder.queries) == 2
    # A rebuild opens a new store, whose answers come from the new build, not the old cache.
    store = open_store(settings, embedder=embedder)
    before = {hit.id for hit in store.retrieve("wizard dragon", 10)}
    build_vector_db(book_documents()[:3], settings=settings, embedder=embedder, source="test", progress=False)
    after = {hit.id for hit in open_store(settings, embedder=embedder).retrieve("wizard dragon", 10)}
    assert len(before) == 10 and len(after) == 3 and after < before
