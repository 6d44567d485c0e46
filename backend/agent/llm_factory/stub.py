"""`StubLLM`: the deterministic, offline LLM for development, tests and degraded mode."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from agent.config import PROVIDER_STUB, CostMode
from agent.cost_policy import STUB_MODEL, CostDecision
from agent.language import detect_language
from agent.llm_factory.results import (
    Prompt,
    deadline_message,
    estimate_prompt_tokens,
    estimate_tokens,
    result,
    to_messages,
)
from agent.prompts import GroundedPrompt, parse_grounded_prompt


class StubLLM:
    """A deterministic, offline LLM for development, tests and degraded mode.

    Given a grounded prompt (agent.prompts) it lists the books it was shown with one line on why, in the
    question's language, or says none matched; any other prompt gets a short echo. Tokens are estimated,
    cost is 0.
    """

    provider = PROVIDER_STUB

    def __init__(self, model: str = STUB_MODEL, *, decision: CostDecision | None = None):
        self.model = model
        self.decision = decision or CostDecision(
            mode=CostMode.PAID.value, key_source="none", provider=PROVIDER_STUB, model=model
        )

    def __repr__(self) -> str:
        return f"StubLLM(model={self.model!r})"

    def invoke(self, prompt: Prompt, *, deadline: float | None = None) -> dict[str, Any]:
        """Answer at once; a deadline <= 0 gives error "timeout" like the real client."""
        started = time.monotonic()
        messages = to_messages(prompt)
        if deadline is not None and deadline <= 0:
            return result(
                provider=self.provider,
                model=self.model,
                started=started,
                prices=None,
                error={"code": "timeout", "message": deadline_message(0)},
            )
        content = stub_answer(messages)
        return result(
            provider=self.provider,
            model=self.model,
            started=started,
            content=content,
            prompt_tokens=estimate_prompt_tokens(messages),
            completion_tokens=estimate_tokens(content),
            usage_estimated=True,
            prices=None,
        )

    async def ainvoke(self, prompt: Prompt, *, deadline: float | None = None) -> dict[str, Any]:
        return self.invoke(prompt, deadline=deadline)


_STUB_TEXT = {
    "es": {
        "intro": "Según el catálogo, te recomiendo:",
        "none": "No encontré libros en el catálogo que coincidan con tu consulta.",
        "by": "«{title}», de {author}",
        "genres": "Géneros: {genres}.",
        "fallback": "Aparece entre los resultados de tu búsqueda.",
    },
    "en": {
        "intro": "From the catalogue, I recommend:",
        "none": "I found no books in the catalogue that match your question.",
        "by": '"{title}" by {author}',
        "genres": "Genres: {genres}.",
        "fallback": "It appears among the results of your search.",
    },
}


def stub_answer(messages: Sequence[Mapping[str, Any]]) -> str:
    """The stub's deterministic reply to `messages` (see `StubLLM`)."""
    grounded = parse_grounded_prompt(messages)
    if grounded is None:
        last = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
        text = " ".join(last.split())
        return f"Stub answer to: {text[:160]}" if text else "Stub answer."
    return _grounded_stub_answer(grounded)


def _grounded_stub_answer(grounded: GroundedPrompt) -> str:
    language = grounded.language if grounded.language in _STUB_TEXT else detect_language(grounded.question)
    text = _STUB_TEXT[language]
    if not grounded.books:
        return text["none"]
    lines = [text["intro"]]
    for number, book in enumerate(grounded.books, start=1):
        year = f" ({book.year})" if book.year is not None else ""
        if book.synopsis:
            why = _first_sentence(book.synopsis)
        elif book.genres:
            why = text["genres"].format(genres=", ".join(book.genres))
        else:
            why = text["fallback"]
        lines.append(
            f"{number}. {text['by'].format(title=book.title, author=book.author)}{year}: {why} [id={book.id}]"
        )
    return "\n".join(lines)


def _first_sentence(text: str, limit: int = 160) -> str:
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    sentence = match[1] if match else text
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"
