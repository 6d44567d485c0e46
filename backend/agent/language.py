"""Offline language detection for queries: Spanish or English.

A tiny heuristic is enough here: queries are short ("libros de fantasía para niños", "a book about
whales") and we only choose between the two languages the product answers in. A model would add a
download and start-up time for no gain.
"""

from __future__ import annotations

import re
from typing import Literal

Language = Literal["es", "en"]


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Function words and catalogue words that are frequent in queries and unambiguous between the two
# languages. Words both languages share ("a", "me", "no", "son", "he") are left out on purpose.
_ES_WORDS = _wordset(
    """
    de del la las el los un una unos unas y o ni en para por con sin sobre que qué como cómo cual cuál
    al lo su sus mi mis es está están era fue muy más pero entre hasta desde cuando donde dónde quiero
    busco algún alguna alguno algo este esta estos estas ese esa otro otra le les se porque también
    tiene hay libro libros novela novelas cuento cuentos niños niñas jóvenes historia historias autor
    autora guerra amor parecido parecida parecidos recomiéndame recomienda recomendación mejor mejores
    escrito escrita ambientada ambientado
    """
)
_EN_WORDS = _wordset(
    """
    the an of and or about for with without in on to from by is are was were that this these those
    some any my i want looking like similar book books novel novels story stories kids children young
    adult war love recommend something what which who how where set written it its their than more
    most best good new please
    """
)
# Characters that English text practically never has.
_ES_CHARS = frozenset("áéíóúüñ¿¡")
_WORD = re.compile(r"[a-záéíóúüñ]+")


def detect_language(text: str, *, default: Language = "es") -> Language:
    """Return "es" or "en" for `text`; `default` when there is no evidence either way.

    The default is Spanish because the catalogue and most users are Spanish-speaking; a bare title
    such as "Dune" carries no signal.
    """
    lowered = (text or "").lower()
    words = _WORD.findall(lowered)
    es = sum(1 for w in words if w in _ES_WORDS) + 2 * sum(1 for c in lowered if c in _ES_CHARS)
    es += sum(1 for w in words if w.endswith(("ción", "ciones")))
    en = sum(1 for w in words if w in _EN_WORDS)
    en += sum(1 for w in words if len(w) > 4 and w.endswith(("ing", "tion", "tions")))
    if es > en:
        return "es"
    if en > es:
        return "en"
    return default
