"""detect_language: an offline heuristic for short queries."""

import pytest

from agent.language import detect_language


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("libros de fantasía para niños", "es"),
        ("novela sobre la guerra", "es"),
        ("¿Qué leo si me gustó Cien años de soledad?", "es"),
        ("algo parecido a Dune", "es"),
        ("historias de amor en la ciudad", "es"),
        ("a book about whales", "en"),
        ("novels set during the war", "en"),
        ("fantasy books for kids", "en"),
        ("What should I read after Dune?", "en"),
        ("something like One Hundred Years of Solitude", "en"),
        ("stories about growing up", "en"),
    ],
)
def test_detects_the_language_of_short_queries(text, expected):
    assert detect_language(text) == expected


@pytest.mark.parametrize("text", ["", "Dune", "1984", "   "])
def test_no_evidence_gives_the_default(text):
    assert detect_language(text) == "es"
    assert detect_language(text, default="en") == "en"
