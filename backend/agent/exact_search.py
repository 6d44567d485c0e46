"""The degraded path: keyword search over the catalogue, with no vector store and no embedding model.

`exact_search()` scores documents by the query's keywords (accents and case folded, stopwords dropped,
stems matched a little less) per field, applies the same filters as the store, and returns `Hit`s shaped
like the store's.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable

from .errors import InvalidQuery
from .types import Document, Filters, Hit
from .vector_store import id_sort_key, make_hit, normalise_genre

# Words that carry no meaning for a catalogue search, in the two languages of the catalogue.
_STOPWORD_TEXT = """
    a al algo algun alguna algunas alguno algunos ante antes aqui asi busco como con contra cual
    cuales cuando de del desde donde durante el ella ellas ello ellos en entre era es esa esas ese
    eso esos esta estas este esto estos ha hay la las le les libro libros lo los mas me mi mis muy
    no nos novela novelas o otra otro para pero poco por porque que quiero quien se sea ser si sin
    sobre su sus tambien tan te tiene todo tu un una unas uno unos y ya yo
    about after an and any are as at be book books but by can do does find for from has have how i
    in into is it its like me my novel novels of on or over some something that the their them
    there these this those to under want was what when where which who with without would you your
    """
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
FIELD_WEIGHTS = (("title", 1.0), ("author", 1.0), ("genres", 0.6), ("synopsis", 0.4))
PREFIX_FACTOR = 0.8  # "dragon" also matches "dragones": a stem match counts a little less
MIN_PREFIX = 4


def fold(text: str) -> str:
    """Lower-case and strip accents: "Corazón" -> "corazon", "Ñandú" -> "nandu"."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def keywords(text: str) -> list[str]:
    """The folded words of `text` without stopwords, in order (underscores split: literary_fiction)."""
    return [word for word in re.split(r"[^0-9a-z]+", fold(text)) if word and word not in STOPWORDS]


def _field_text(doc: Document, field: str) -> str:
    value = doc.metadata.get(field)
    if field == "synopsis" and not value:
        value = doc.text  # a generic dataset has no synopsis: its text is the searchable body
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return str(value or "")


def _passes(doc: Document, filters: Filters | None) -> bool:
    if filters is None:
        return True
    meta = doc.metadata
    if filters.language and str(meta.get("language", "")).lower() != filters.language.strip().lower():
        return False
    if filters.genres:
        genres = {normalise_genre(g) for g in meta.get("genres") or []}
        if not genres & {normalise_genre(g) for g in filters.genres}:
            return False
    year = meta.get("year")
    if filters.year_min is not None and (year is None or year < filters.year_min):
        return False
    return not (filters.year_max is not None and (year is None or year > filters.year_max))


def _stem_match(term: str, word: str) -> bool:
    return word.startswith(term) or (len(word) >= MIN_PREFIX and term.startswith(word))


def _term_weight(term: str, fields: list[tuple[set[str], float]]) -> float:
    best = 0.0
    for words, weight in fields:
        if term in words:
            best = max(best, weight)
        elif len(term) >= MIN_PREFIX and any(_stem_match(term, word) for word in words):
            best = max(best, weight * PREFIX_FACTOR)
    return best


def exact_search(
    query: str,
    k: int = 5,
    filters: Filters | None = None,
    catalogue: Iterable[Document] | Callable[[], Iterable[Document]] = (),
) -> list[Hit]:
    """Keyword search over `catalogue` (documents, or a callable returning them): the degraded path.

    Case- and accent-insensitive; stopwords (Spanish, English) ignored. Each query word scores the
    weight of the best field it appears in (title and author 1.0, genres 0.6, synopsis 0.4; a prefix
    match 80% of that); a document's score is the mean over the query words, in [0, 1], rounded to 6
    places. Documents with no match are left out; ties are ordered by id. Raises `InvalidQuery` for k < 1.
    """
    if k < 1:
        raise InvalidQuery(f"k must be at least 1, got {k}")
    terms = list(dict.fromkeys(keywords(query)))
    if not terms:
        return []
    documents = catalogue() if callable(catalogue) else catalogue
    hits = []
    for doc in documents:
        if not _passes(doc, filters):
            continue
        fields = [(set(keywords(_field_text(doc, name))), weight) for name, weight in FIELD_WEIGHTS]
        score = round(sum(_term_weight(term, fields) for term in terms) / len(terms), 6)
        if score > 0:
            metadata = {key: value for key, value in doc.metadata.items() if value is not None}
            metadata.setdefault("genres", [])
            hits.append(make_hit(doc.id, score, metadata, doc.text))
    hits.sort(key=lambda hit: (-hit.score, id_sort_key(hit.id)))
    return hits[:k]
