"""language: the answer language of a question, and which signal chose it.

The queries are our own, short and long, in both languages: 1-3 word queries, titles, and sentences.
Each one is asserted on its own (a miss names the query), not as an accuracy rate.
"""

import pytest

from agent.language import DEFAULT_LANGUAGE, choose_language, detect_language, parse_accept_language

ENGLISH = [
    "space opera",
    "cozy murder mysteries",
    "whales",
    "dragons",
    "ghost stories",
    "time travel romance",
    "hard science fiction",
    "books like Dune",
    "coming of age",
    "haunted house",
    "funny fantasy",
    "detective novels set in London",
    "The Name of the Wind",
    "Pride and Prejudice",
    "The Lord of the Rings",
    "a novel about a whale hunt and obsession at sea",
    "something short and sad to read on a train",
    "I loved The Hobbit, what should I read next?",
    "recommend me a thriller with a twist ending",
    "books for a ten year old who likes horses",
    "Which classic Russian novels are worth reading first, and in what order would you suggest?",
    "I want a long epic fantasy series with political intrigue, morally grey characters and no romance subplot.",
    "love stories",
    "war novels",
    "poetry",
    "What should I read after Dune?",
    "stories about growing up",
    "a book about whales",
]
SPANISH = [
    "ópera espacial",
    "misterios acogedores",
    "ballenas",
    "dragones",
    "cuentos de fantasmas",
    "novela negra",
    "ciencia ficción dura",
    "libros como Dune",
    "casa encantada",
    "viajes en el tiempo",
    "fantasía divertida",
    "novelas policiacas ambientadas en Madrid",
    "Cien años de soledad",
    "La sombra del viento",
    "El amor en los tiempos del cólera",
    "una novela sobre la caza de una ballena y la obsesión en el mar",
    "algo corto y triste para leer en el tren",
    "me encantó El Hobbit, ¿qué debería leer después?",
    "recomiéndame un thriller con un final sorprendente",
    "libros para una niña de diez años a la que le gustan los caballos",
    "¿Qué novelas rusas clásicas vale la pena leer primero y en qué orden me las sugieres?",
    "Quiero una saga de fantasía épica larga, con intrigas políticas, personajes ambiguos y sin trama romántica.",
    "poesía",
    "guerra civil",
    "historias de amor",
    "libros de fantasía para niños",
    "¿Qué leo si me gustó Cien años de soledad?",
    "algo parecido a Dune",
]


def test_the_query_set_is_large_and_has_short_queries():
    queries = ENGLISH + SPANISH
    assert len(queries) >= 40
    assert len(set(queries)) == len(queries)
    assert sum(1 for q in queries if len(q.split()) <= 3) >= 20


@pytest.mark.parametrize("query", ENGLISH)
def test_english_queries_are_detected_as_english(query):
    assert detect_language(query) == "en"


@pytest.mark.parametrize("query", SPANISH)
def test_spanish_queries_are_detected_as_spanish(query):
    assert detect_language(query) == "es"


@pytest.mark.parametrize("text", ["", "   ", "1984", "???", "42 - 7"])
def test_text_without_letters_carries_no_evidence(text):
    assert detect_language(text) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("en-GB,en;q=0.9,es;q=0.8", "en"),
        ("es-ES", "es"),
        ("ES-mx;q=0.7, en;q=0.6", "es"),
        ("fr, de;q=0.9, en;q=0.3", "en"),
        ("en;q=0.4, es;q=0.9", "es"),
        ("es;q=0.5, en;q=0.5", "es"),  # a tie: the first listed wins
        ("fr, de", None),
        ("*", None),
        ("en;q=0, es;q=0", None),  # q=0 means "not acceptable"
        ("en;q=abc", None),
        ("", None),
        (None, None),
    ],
)
def test_accept_language_gives_the_most_preferred_supported_language(header, expected):
    assert parse_accept_language(header) == expected


def test_a_client_option_wins_over_detection_and_detection_is_still_recorded():
    choice = choose_language("cozy murder mysteries", requested="es", requested_source="option")
    assert (choice.language, choice.source, choice.detected) == ("es", "option", "en")
    assert choice.to_trace() == {"language": "es", "language_source": "option", "language_detected": "en"}


def test_a_header_choice_is_recorded_as_header():
    choice = choose_language("novela negra", requested="en", requested_source="header")
    assert (choice.language, choice.source, choice.detected) == ("en", "header", "es")


def test_without_a_client_choice_the_detected_language_decides():
    choice = choose_language("space opera", requested=None, requested_source=None)
    assert (choice.language, choice.source, choice.detected) == ("en", "detected", "en")


def test_without_any_evidence_the_default_decides():
    choice = choose_language("1984", requested=None, requested_source=None)
    assert (choice.language, choice.source, choice.detected) == (DEFAULT_LANGUAGE, "default", None)


def test_an_unsupported_requested_language_is_ignored():
    choice = choose_language("ghost stories", requested="fr", requested_source="option")
    assert (choice.language, choice.source) == ("en", "detected")
