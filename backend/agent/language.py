"""Which language to answer in: Spanish or English, and which signal decided it.

The client may say it (the job's `language` option, or the `Accept-Language` header, which the API turns
into the same option); otherwise the question's language is identified offline by Lingua, restricted to
the two languages the product answers in. Lingua's statistical models ship inside its wheel (nothing is
downloaded) and, unlike word lists, they are right on two-word queries such as "space opera" or
"novela negra" (docs/llm.md, "Answer language", has the figures that chose it: accuracy on our query
set, install size, start-up and per-call time). When nothing tells the language (a query without
letters), the answer is in `DEFAULT_LANGUAGE`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal

from lingua import Language as LinguaLanguage
from lingua import LanguageDetectorBuilder

Language = Literal["es", "en"]
#: The languages the product answers in, in order of preference for a tie in Accept-Language.
LANGUAGES: tuple[Language, ...] = ("es", "en")
#: The catalogue and most users are Spanish-speaking.
DEFAULT_LANGUAGE: Language = "es"
#: Which signal chose the answer language, as recorded in the trace.
LanguageSource = Literal["option", "header", "detected", "default"]

_LINGUA = {LinguaLanguage.SPANISH: "es", LinguaLanguage.ENGLISH: "en"}
_detector: Any = None
_detector_lock = threading.Lock()


def _get_detector() -> Any:
    """Lingua's detector for Spanish and English, built once per process.

    High-accuracy mode (the low-accuracy one misses "space opera"); its models load on first use.
    """
    global _detector
    if _detector is None:
        with _detector_lock:
            if _detector is None:
                _detector = LanguageDetectorBuilder.from_languages(*_LINGUA).build()
    return _detector


def detect_language(text: str) -> Language | None:
    """ "es" or "en" for `text`, or None when it carries no evidence (no letters at all)."""
    if not any(ch.isalpha() for ch in text or ""):
        return None
    return _LINGUA.get(_get_detector().detect_language_of(text))  # type: ignore[return-value]


def warm_up() -> None:
    """Load the models now (about a second) so that the first job does not pay for it."""
    detect_language("Una frase de prueba para cargar los modelos; and an English one to load them too.")


def parse_accept_language(header: str | None) -> Language | None:
    """The most preferred of `LANGUAGES` in an Accept-Language header (RFC 9110), or None.

    "en-GB,en;q=0.9,es;q=0.8" gives "en"; "fr, de" and "*" give None (no preference we can honour);
    a range with q=0 is refused. Malformed parts are skipped, never an error: the header is advisory.
    """
    best: tuple[float, int] | None = None
    chosen: Language | None = None
    for position, part in enumerate((header or "")[:1000].split(",")):
        pieces = [p.strip() for p in part.split(";")]
        tag = pieces[0].lower()
        quality = 1.0
        for param in pieces[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = -1.0
        primary = tag.split("-")[0]
        if primary not in LANGUAGES or not 0 < quality <= 1:
            continue
        rank = (quality, -position)
        if best is None or rank > best:
            best, chosen = rank, primary  # type: ignore[assignment]
    return chosen


@dataclass(frozen=True)
class LanguageChoice:
    """The answer language, the signal that chose it, and what detection found (None: no evidence)."""

    language: Language
    source: LanguageSource
    detected: Language | None

    def to_trace(self) -> dict[str, Any]:
        return {"language": self.language, "language_source": self.source, "language_detected": self.detected}


def choose_language(query: str, *, requested: str | None, requested_source: str | None) -> LanguageChoice:
    """The answer language for `query`: the client's (`requested`, from "option" or "header"), else detected.

    Detection always runs, so that the trace shows it beside a client's choice.
    """
    detected = detect_language(query)
    if requested in LANGUAGES:
        source: LanguageSource = "header" if requested_source == "header" else "option"
        return LanguageChoice(language=requested, source=source, detected=detected)  # type: ignore[arg-type]
    if detected is not None:
        return LanguageChoice(language=detected, source="detected", detected=detected)
    return LanguageChoice(language=DEFAULT_LANGUAGE, source="default", detected=None)
