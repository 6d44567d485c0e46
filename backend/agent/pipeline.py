"""The agent pipeline: retrieve -> grounded prompt -> LLM -> compose, with a trace and degraded mode.

Framework-free: it takes plain objects (an LLM runnable from `llm_factory`, a store with `retrieve`,
an exact-search callable) and returns an `AgentResult` in the seed's response contract. It never
raises for a provider or store failure: those become degraded answers or a failed result.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from .errors import Cancelled, InvalidQuery, VectorStoreUnavailable
from .language import choose_language
from .llm_factory import invoke_whole, stream_llm
from .prompts import PROMPT_VERSION, build_grounded_prompt
from .types import AgentOptions, AgentResult, Filters, Hit, TraceStep

logger = logging.getLogger(__name__)

MAX_QUERY_CHARS = 4000
MAX_TOP_K = 50
#: The only action types a client ever receives. Built by our code, never taken from the model.
ACTION_TYPES = ("view_book", "refine_search")


class Retriever(Protocol):
    def retrieve(self, query: str, k: int, filters: Filters) -> list[Hit]: ...


class Runnable(Protocol):
    def invoke(self, prompt: Any, *, deadline: float | None = None) -> dict[str, Any]: ...


ExactSearch = Callable[[str, int, Filters], list[Hit]]
#: Receives the run's live events as (name, data): retrieval, llm.delta, llm.done, degraded (docs/api.md).
OnEvent = Callable[[str, dict[str, Any]], None]


class _Clock:
    """Times steps for the trace; wall time for `started_at`, monotonic time for durations."""

    def __init__(self) -> None:
        self.started_at = datetime.now(UTC).isoformat()
        self._t0 = time.perf_counter()

    def ms(self) -> float:
        return round((time.perf_counter() - self._t0) * 1000, 3)


def run(
    query: str,
    options: AgentOptions,
    llm: Runnable,
    store: Retriever,
    deadline: float,
    *,
    exact_search: ExactSearch,
    is_cancelled: Callable[[], bool] = lambda: False,
    on_event: OnEvent | None = None,
    stream_answer: bool = True,
) -> AgentResult:
    """Answer `query` from the catalogue.

    `deadline` is an absolute `time.monotonic()` value for the whole run. Returns an `AgentResult`;
    `result.error` is set only for invalid input or when both the vector store and the LLM failed.
    Raises `Cancelled` when `is_cancelled()` turns true at a step boundary.

    With `on_event`, the run reports its progress as it goes and the LLM answer is streamed
    (`llm_factory.stream_llm`): each piece of text is an `llm.delta` event, after which `is_cancelled()` is
    asked again (a cancel stops the stream). The result is the same as without `on_event`.
    `stream_answer=False` keeps the events but makes one plain call, whose text is then one `llm.delta`
    (batch jobs: nobody reads their answer word by word, and a streamed call costs the worker about
    3.5 times the CPU at 1,000 jobs in flight, docs/benchmarks.md).
    """
    trace: list[TraceStep] = []
    try:
        query = validate_query(query, options)
    except InvalidQuery as exc:
        return AgentResult(
            message="", results=[], actions=[], trace=trace, error={"code": exc.code, "message": exc.message}
        )
    choice = choose_language(query, requested=options.language, requested_source=options.language_source)
    language = choice.language

    # 1. Retrieve, falling back to exact search over the catalogue when the vector store fails.
    _check_cancel(is_cancelled)
    hits, store_error, source = _retrieve(query, options, store, exact_search, trace)
    degraded = store_error is not None
    if on_event is not None:
        on_event("retrieval", {"source": source, "books": [_book(hit) for hit in hits]})
        if store_error:
            on_event("degraded", {"why": "vector_store_unavailable", "error": store_error})

    # 2. Grounded prompt: only the retrieved books, with the instruction to refuse to invent any.
    _check_cancel(is_cancelled)
    clock = _Clock()
    messages = build_grounded_prompt(query, hits, language)
    trace.append(
        TraceStep(
            name="prompt",
            started_at=clock.started_at,
            duration_ms=clock.ms(),
            inputs={"books": len(hits), **choice.to_trace()},
            outputs={"prompt_version": PROMPT_VERSION, "messages": len(messages), "chars": _chars(messages)},
        )
    )

    # 3. LLM, bounded by what is left of the deadline.
    _check_cancel(is_cancelled)
    clock = _Clock()
    if on_event is None:
        answer = llm.invoke(messages, deadline=deadline - time.monotonic())
    else:

        def on_delta(text: str) -> None:
            on_event("llm.delta", {"text": text})
            _check_cancel(is_cancelled)

        call = stream_llm if stream_answer else invoke_whole
        answer = call(llm, messages, on_delta=on_delta, deadline=deadline - time.monotonic())
    llm_error = answer.get("error")
    if on_event is not None:
        on_event("llm.done", llm_done_data(answer))
        if llm_error:
            on_event("degraded", {"why": "llm_failed", "error": llm_error})
    trace.append(
        TraceStep(
            name="llm",
            started_at=clock.started_at,
            duration_ms=clock.ms(),
            inputs={"provider": answer.get("provider"), "model": answer.get("model")},
            outputs={
                "latency_ms": answer.get("latency_ms"),
                "chars": len(answer.get("content") or ""),
                "usage_estimated": bool(answer.get("usage_estimated")),
            },
            prompt_tokens=answer.get("prompt_tokens"),
            completion_tokens=answer.get("completion_tokens"),
            cost_usd=answer.get("cost_usd"),
            error=llm_error,
        )
    )
    _check_cancel(is_cancelled)

    # 4. Compose the contract from our own data; the model contributes only the message text.
    clock = _Clock()
    if llm_error:
        degraded = True
        logger.warning("llm failed, answering degraded: code=%s", llm_error.get("code"))
        message = _fallback_message(
            hits, language, budget=str(llm_error.get("code", "")).startswith("budget_")
        )
    else:
        message = (answer.get("content") or "").strip()
    results = [_result_row(hit, message, source) for hit in hits]
    actions = build_actions(hits, options)
    error = None
    if store_error and llm_error:
        error = {
            "code": "agent_unavailable",
            "message": "Both the vector store and the language model failed; see the trace.",
        }
    trace.append(
        TraceStep(
            name="compose",
            started_at=clock.started_at,
            duration_ms=clock.ms(),
            outputs={
                "results": len(results),
                "actions": len(actions),
                "degraded": degraded,
                "source": source,
            },
        )
    )
    return AgentResult(
        message=message,
        results=results,
        actions=actions,
        trace=trace,
        error=error,
        degraded=degraded,
        prompt_tokens=int(answer.get("prompt_tokens") or 0),
        completion_tokens=int(answer.get("completion_tokens") or 0),
        cost_usd=float(answer.get("cost_usd") or 0.0),
    )


def llm_done_data(answer: dict[str, Any]) -> dict[str, Any]:
    """The `llm.done` event's data from an LLM result dict: usage, cost and error."""
    return {
        "usage": {
            "prompt_tokens": int(answer.get("prompt_tokens") or 0),
            "completion_tokens": int(answer.get("completion_tokens") or 0),
            "estimated": bool(answer.get("usage_estimated")),
        },
        "cost_usd": float(answer.get("cost_usd") or 0.0),
        "error": answer.get("error"),
    }


def _book(hit: Hit) -> dict[str, Any]:
    """A retrieved book as the `retrieval` event shows it; a result row adds why and whether it is cited."""
    return {
        "id": hit.id,
        "title": hit.title,
        "author": hit.author,
        "year": hit.year,
        "score": round(float(hit.score), 6),
    }


def validate_query(query: str, options: AgentOptions) -> str:
    """Return the trimmed query; raise `InvalidQuery` for what the API should have refused already."""
    if not isinstance(query, str):
        raise InvalidQuery("The query must be a string.")
    query = query.strip()
    if not query:
        raise InvalidQuery("The query is empty.")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidQuery(f"The query is longer than {MAX_QUERY_CHARS} characters.")
    if "\x00" in query:
        raise InvalidQuery("The query contains a NUL character.")
    if not 1 <= options.top_k <= MAX_TOP_K:
        raise InvalidQuery(f"top_k must be between 1 and {MAX_TOP_K}.")
    return query


def _retrieve(
    query: str, options: AgentOptions, store: Retriever, exact_search: ExactSearch, trace: list[TraceStep]
) -> tuple[list[Hit], dict[str, Any] | None, str]:
    clock = _Clock()
    inputs = {"query_chars": len(query), "top_k": options.top_k, "filters": options.filters.to_dict()}
    try:
        hits = store.retrieve(query, options.top_k, options.filters)
    except VectorStoreUnavailable as exc:
        store_error = {"code": exc.code, "message": exc.message}
        logger.warning("vector store unavailable, using exact search: %s", exc.message)
        trace.append(
            TraceStep(
                name="retrieve",
                started_at=clock.started_at,
                duration_ms=clock.ms(),
                inputs=inputs,
                error=store_error,
            )
        )
        clock = _Clock()
        hits = exact_search(query, options.top_k, options.filters)
        trace.append(_hits_step("exact_search", clock, inputs, hits))
        return hits, store_error, "exact"
    trace.append(_hits_step("retrieve", clock, inputs, hits))
    return hits, None, "vector"


def _hits_step(name: str, clock: _Clock, inputs: dict[str, Any], hits: list[Hit]) -> TraceStep:
    """The trace step of a search that found `hits`."""
    return TraceStep(
        name=name,
        started_at=clock.started_at,
        duration_ms=clock.ms(),
        inputs=inputs,
        outputs={"hits": len(hits), "ids": [h.id for h in hits]},
    )


def _check_cancel(is_cancelled: Callable[[], bool]) -> None:
    if is_cancelled():
        raise Cancelled("The job was cancelled.")


def _chars(messages: Sequence[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content", ""))) for m in messages)


_SENTENCE = re.compile(r"(?<=[.!?])\s")


def _why(hit: Hit, source: str) -> str:
    """One line, from our data, saying why this book is in the answer."""
    synopsis = str(hit.metadata.get("synopsis") or "").strip()
    first = _SENTENCE.split(synopsis, maxsplit=1)[0] if synopsis else ""
    if len(first) > 160:
        first = first[:157].rstrip() + "..."
    genres = hit.metadata.get("genres") or []
    prefix = "Keyword match" if source == "exact" else "Close match"
    if genres:
        prefix += f" ({', '.join(genres)})"
    return f"{prefix}: {first}" if first else prefix


def _result_row(hit: Hit, message: str, source: str) -> dict[str, Any]:
    return {
        **_book(hit),
        "why": _why(hit, source),
        # Whether the answer text names this book: lets clients highlight what the model used.
        "cited": hit.title.lower() in message.lower() or f"id={hit.id}" in message,
    }


def build_actions(hits: Sequence[Hit], options: AgentOptions) -> list[dict[str, Any]]:
    """Actions from a fixed vocabulary that point only at catalogue ids or at our own search filters."""
    actions: list[dict[str, Any]] = [
        {"type": "view_book", "book_id": hit.id, "label": hit.title} for hit in hits
    ]
    genres: dict[str, int] = {}
    for hit in hits:
        for genre in hit.metadata.get("genres") or []:
            genres[genre] = genres.get(genre, 0) + 1
    if genres and not options.filters.genres:
        top = sorted(genres.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        actions.append(
            {"type": "refine_search", "label": f"Only {top.replace('_', ' ')}", "filters": {"genres": [top]}}
        )
    return actions


_FALLBACK = {
    "es": (
        "No pude consultar el modelo de lenguaje. Estos son los libros del catálogo más cercanos a tu pregunta:",
        "No encontré libros del catálogo para tu pregunta.",
    ),
    "en": (
        "The language model could not be reached. These are the closest books in the catalogue:",
        "No books in the catalogue match your question.",
    ),
}


#: When a spending budget stopped the call (agent.budget): the model was not asked, on purpose.
_BUDGET_INTRO = {
    "es": "El presupuesto de uso del modelo de lenguaje está agotado. Estos son los libros del catálogo más "
    "cercanos a tu pregunta:",
    "en": "The spending budget for the language model is used up. These are the closest books in the catalogue:",
}


def _fallback_message(hits: Sequence[Hit], language: str, *, budget: bool = False) -> str:
    intro, empty = _FALLBACK.get(language, _FALLBACK["en"])
    if budget:
        intro = _BUDGET_INTRO.get(language, _BUDGET_INTRO["en"])
    if not hits:
        return empty
    lines = [f"- {hit.title} ({hit.author}, {hit.year})" for hit in hits]
    return "\n".join([intro, *lines])
