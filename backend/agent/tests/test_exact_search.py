"""`exact_search()`: the degraded path over the catalogue itself, no vector store."""

from __future__ import annotations

import pytest

from agent.errors import InvalidQuery
from agent.exact_search import exact_search, fold, keywords
from agent.tests.vector_helpers import book_documents
from agent.types import Document, Filters

CATALOGUE = book_documents()


def ids(hits):
    return [hit.id for hit in hits]


def test_fold_and_keywords():
    assert fold("Corazón ÑANDÚ Über") == "corazon nandu uber"
    assert keywords("Una novela sobre el CORAZÓN de la selva, literary_fiction") == [
        "corazon",
        "selva",
        "literary",
        "fiction",
    ]


def test_accents_and_case_do_not_matter():
    assert ids(exact_search("cafe", 5, None, CATALOGUE))[0] == "9"
    assert ids(exact_search("CORAZON", 5, None, CATALOGUE)) == ["8"]
    assert ids(exact_search("garcia marquez", 5, None, CATALOGUE)) == ["2"]
    assert ids(exact_search("Búsqueda de SOLEDAD", 5, None, CATALOGUE)) == ["2"]


def test_title_and_author_weigh_more_than_synopsis():
    # "wizard" is in the title of Earthsea and only in the synopsis of The Hobbit.
    hits = exact_search("wizard", 5, None, CATALOGUE)
    assert ids(hits) == ["10", "3"]
    assert hits[0].score == 1.0
    assert hits[1].score == 0.4


def test_score_is_the_mean_over_query_words():
    hits = exact_search("dracula zzzz", 5, None, CATALOGUE)
    assert ids(hits) == ["6"]
    assert hits[0].score == 0.5


def test_prefix_matches_count_a_little_less():
    # "vampire" matches "vampires" in the synopsis of Dracula, at 80% of the synopsis weight.
    hits = exact_search("vampire", 5, None, CATALOGUE)
    assert ids(hits) == ["6"]
    assert hits[0].score == pytest.approx(0.32)


def test_stopwords_only_and_no_match_give_nothing():
    assert exact_search("the of y de un libro", 5, None, CATALOGUE) == []
    assert exact_search("quantum chromodynamics", 5, None, CATALOGUE) == []


def test_ties_are_ordered_by_id_and_k_is_respected():
    docs = [Document(id=i, text="x", metadata={"title": "Same Title"}) for i in ("10", "2", "1")]
    assert ids(exact_search("same title", 5, None, docs)) == ["1", "2", "10"]
    assert ids(exact_search("same title", 2, None, docs)) == ["1", "2"]


def test_filters_apply():
    assert ids(exact_search("familia", 5, Filters(language="es"), CATALOGUE)) == ["2", "7"]
    assert ids(exact_search("familia", 5, Filters(genres=("cooking",)), CATALOGUE)) == ["7"]
    assert ids(exact_search("wizard", 5, Filters(year_min=1950), CATALOGUE)) == ["10"]
    assert ids(exact_search("wizard", 5, Filters(year_max=1950), CATALOGUE)) == ["3"]


def test_catalogue_may_be_a_callable_and_hits_carry_metadata():
    hits = exact_search("hobbit", 1, None, lambda: iter(CATALOGUE))
    assert (hits[0].title, hits[0].author, hits[0].year) == ("The Hobbit", "J. R. R. Tolkien", 1937)
    assert hits[0].metadata["genres"] == ["fantasy", "children"]
    assert hits[0].metadata["language"] == "en"


def test_generic_documents_are_searched_by_their_text():
    docs = [
        Document(id="a", text="Notes about sourdough bread"),
        Document(id="b", text="Engine repair manual"),
    ]
    hits = exact_search("bread", 5, None, docs)
    assert ids(hits) == ["a"]
    assert hits[0].title == "Notes about sourdough bread"


def test_bad_k_is_rejected():
    with pytest.raises(InvalidQuery):
        exact_search("anything", 0, None, CATALOGUE)
