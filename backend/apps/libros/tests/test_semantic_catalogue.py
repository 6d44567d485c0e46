"""Semantic retrieval on the real catalogue fixture with the real offline model.

The queries share no keyword with the book they must find (checked below with the same keyword
extraction that exact search uses), several cross languages, and exact search misses them: this is
what the vector store adds over the degraded path.

Embedding the 320 books takes about a minute on two cores, so the store is the session-wide one of
the root conftest (`catalogue_vector_settings`), cached under var/ and updated incrementally: an
unchanged fixture re-embeds nothing on later runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.exact_search import exact_search, keywords
from agent.types import Filters
from agent.vector_store import open_store
from apps.libros.catalogue import libro_document
from apps.libros.models import Libro

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "libros_prueba.json"


def fixture_documents():
    rows = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return [libro_document(Libro(pk=row["pk"], **row["fields"])) for row in rows]


@pytest.fixture(scope="session")
def catalogue_store(catalogue_vector_settings):
    """(settings, documents by id) of the store of the whole fixture (the shared one from conftest.py)."""
    return catalogue_vector_settings, {doc.id: doc for doc in fixture_documents()}


def titles(hits):
    return [hit.title for hit in hits]


def test_the_store_holds_the_whole_catalogue(catalogue_store):
    settings, documents = catalogue_store
    store = open_store(settings)
    assert store.count() == len(documents) >= 300
    assert store.manifest["embedding_model"] == "multilingual-e5-small-q4"
    assert store.manifest["embedding_dim"] == 384


SEMANTIC = [
    # (query, id of the book it describes, its title): Spanish to English, English to Spanish, English
    (
        "un anciano pescador lucha durante días con un pez enorme en alta mar",
        "144",
        "The Old Man and the Sea",
    ),
    (
        "un submarino y su misterioso capitán recorren los océanos",
        "230",
        "Twenty Thousand Leagues Under the Seas",
    ),
    ("una niña cae por una madriguera a un mundo absurdo", "143", "Alice's Adventures in Wonderland"),
    ("a prince locked in a tower who wonders whether life is a dream", "17", "La vida es sueño"),
    ("a book about how living things change over millions of years", "281", "On the Origin of Species"),
]


@pytest.mark.parametrize(("query", "book_id", "title"), SEMANTIC)
def test_a_query_without_shared_keywords_finds_the_book(catalogue_store, query, book_id, title):
    settings, documents = catalogue_store
    book = documents[book_id]
    # Given a query that shares no keyword with the book's title, synopsis or genres
    assert book.metadata["title"] == title
    assert not set(keywords(query)) & set(keywords(book.text)), (
        "the query must share no keyword with the book"
    )
    # When retrieved
    hits = open_store(settings).retrieve(query, 3)
    # Then the book is among the top 3, while keyword search cannot find it
    assert title in titles(hits), titles(hits)
    assert title not in titles(exact_search(query, 5, None, list(documents.values())))


def test_a_spanish_query_finds_an_english_language_book(catalogue_store):
    settings, documents = catalogue_store
    hits = open_store(settings).retrieve(
        "un anciano pescador lucha durante días con un pez enorme en alta mar", 1
    )
    assert (hits[0].title, hits[0].metadata["language"]) == ("The Old Man and the Sea", "en")
    assert documents[hits[0].id].metadata["synopsis"].startswith("Santiago")


def test_an_english_query_finds_a_spanish_language_book(catalogue_store):
    settings, _ = catalogue_store
    hits = open_store(settings).retrieve("a prince locked in a tower who wonders whether life is a dream", 1)
    assert (hits[0].title, hits[0].metadata["language"]) == ("La vida es sueño", "es")


def test_filters_on_the_real_catalogue(catalogue_store):
    settings, documents = catalogue_store
    store = open_store(settings)
    spanish = store.retrieve("una historia de amor", 10, Filters(language="es"))
    assert len(spanish) == 10 and {hit.metadata["language"] for hit in spanish} == {"es"}
    old_sf = store.retrieve("viaje en el tiempo", 10, Filters(genres=("science_fiction",), year_max=1950))
    assert old_sf and all("science_fiction" in hit.metadata["genres"] and hit.year <= 1950 for hit in old_sf)
    assert "The Time Machine" in titles(old_sf)


def test_retrieval_is_deterministic_on_the_real_catalogue(catalogue_store):
    settings, _ = catalogue_store
    store = open_store(settings)
    first = store.retrieve("novela de misterio", 10)
    assert all(store.retrieve("novela de misterio", 10) == first for _ in range(3))
