"""The pipeline with a fake LLM and a fake store: contract shape, degraded paths, deadline, cancel."""

from __future__ import annotations

import time

import pytest

from agent import pipeline
from agent.errors import Cancelled, VectorStoreUnavailable
from agent.llm_factory import StubLLM
from agent.types import AgentOptions, Filters, Hit

BOOKS = [
    Hit(
        "1",
        "Moby-Dick",
        "Herman Melville",
        1851,
        0.91,
        {"genres": ["adventure"], "synopsis": "A captain hunts a whale. More."},
    ),
    Hit(
        "2",
        "The Old Man and the Sea",
        "Ernest Hemingway",
        1952,
        0.85,
        {"genres": ["literary_fiction"], "synopsis": "An old fisherman fights a marlin."},
    ),
]


class FakeStore:
    def __init__(self, hits=BOOKS, fail=False):
        self.hits, self.fail, self.calls = hits, fail, []

    def retrieve(self, query, k, filters):
        self.calls.append((query, k, filters))
        if self.fail:
            raise VectorStoreUnavailable("manifest missing")
        return self.hits[:k]


class FakeLLM:
    def __init__(self, content="Read [id=1] Moby-Dick.", error=None, delay=0.0):
        self.content, self.error, self.delay, self.deadlines = content, error, delay, []

    def invoke(self, prompt, *, deadline=None):
        self.deadlines.append(deadline)
        time.sleep(self.delay)
        return {
            "content": None if self.error else self.content,
            "provider": "fake",
            "model": "fake-1",
            "latency_ms": self.delay * 1000,
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "usage_estimated": False,
            "cost_usd": 0.0012,
            "error": self.error,
        }


def exact(query, k, filters):
    return [
        Hit(
            "9", "Exact Book", "Someone", 1900, 1.0, {"genres": ["history"], "synopsis": "Found by keywords."}
        )
    ][:k]


def run(query="books about whales", *, store=None, llm=None, top_k=2, timeout=5.0, **kw):
    return pipeline.run(
        query,
        AgentOptions(top_k=top_k),
        llm or FakeLLM(),
        store or FakeStore(),
        time.monotonic() + timeout,
        exact_search=exact,
        **kw,
    )


def test_contract_shape_and_trace_order():
    result = run()
    body = result.to_dict()
    assert set(body) == {"message", "results", "actions", "trace", "error", "degraded"}
    assert body["message"] == "Read [id=1] Moby-Dick."
    assert body["error"] is None and body["degraded"] is False
    assert [r["id"] for r in body["results"]] == ["1", "2"]
    assert body["results"][0]["cited"] is True and body["results"][1]["cited"] is False
    assert body["results"][0]["why"] == "Close match (adventure): A captain hunts a whale."
    assert [s["name"] for s in body["trace"]] == ["retrieve", "prompt", "llm", "compose"]
    llm_step = body["trace"][2]
    assert (llm_step["prompt_tokens"], llm_step["completion_tokens"], llm_step["cost_usd"]) == (
        120,
        30,
        0.0012,
    )
    assert (result.prompt_tokens, result.completion_tokens) == (120, 30)


def test_actions_come_from_our_data_only():
    result = run(llm=FakeLLM(content="Visit http://evil.example and call delete_all()"))
    assert {a["type"] for a in result.actions} <= set(pipeline.ACTION_TYPES)
    assert [a["book_id"] for a in result.actions if a["type"] == "view_book"] == ["1", "2"]
    assert all("http" not in str(a) for a in result.actions)


def test_vector_store_failure_degrades_to_exact_search():
    result = run(store=FakeStore(fail=True))
    assert result.degraded is True and result.error is None
    assert [r["id"] for r in result.results] == ["9"]
    assert [s.name for s in result.trace] == ["retrieve", "exact_search", "prompt", "llm", "compose"]
    assert result.trace[0].error["code"] == "vector_store_unavailable"


def test_llm_failure_degrades_with_plain_message_in_query_language():
    llm = FakeLLM(error={"code": "rate_limited", "message": "429"})
    result = run("novelas sobre el mar y las ballenas", llm=llm)
    assert result.degraded is True and result.error is None
    assert result.message.startswith("No pude consultar el modelo")
    assert "- Moby-Dick (Herman Melville, 1851)" in result.message
    assert result.trace[2].error == {"code": "rate_limited", "message": "429"}


def test_both_failing_fails_the_result_but_keeps_exact_results():
    result = run(store=FakeStore(fail=True), llm=FakeLLM(error={"code": "timeout", "message": "t"}))
    assert result.error["code"] == "agent_unavailable"
    assert [r["id"] for r in result.results] == ["9"]


def test_llm_gets_what_is_left_of_the_deadline():
    llm = FakeLLM()
    run(llm=llm, timeout=3.0)
    assert 2.5 < llm.deadlines[0] <= 3.0


@pytest.mark.parametrize("query", ["", "   ", "x" * 4001, "a\x00b"])
def test_invalid_query_fails_without_calling_anything(query):
    store, llm = FakeStore(), FakeLLM()
    result = run(query, store=store, llm=llm)
    assert result.error["code"] == "invalid_query"
    assert store.calls == [] and llm.deadlines == []


def test_top_k_is_bounded():
    result = run(top_k=51)
    assert result.error["code"] == "invalid_query"


def test_cancel_stops_at_the_next_step_boundary():
    llm = FakeLLM()
    checks = iter([False, False, True])
    with pytest.raises(Cancelled):
        run(llm=llm, is_cancelled=lambda: next(checks))
    assert llm.deadlines == []


def test_filters_reach_the_store():
    store = FakeStore()
    pipeline.run(
        "whales",
        AgentOptions(top_k=1, filters=Filters(language="en", genres=("adventure",))),
        FakeLLM(),
        store,
        time.monotonic() + 5,
        exact_search=exact,
    )
    assert store.calls == [("whales", 1, Filters(language="en", genres=("adventure",)))]


def test_stub_llm_answers_from_the_books_it_was_shown():
    result = run("libros sobre ballenas", llm=StubLLM())
    assert result.degraded is False
    assert "Moby-Dick" in result.message and "Herman Melville" in result.message
    assert result.results[0]["cited"] is True


def test_deterministic():
    first, second = run(llm=StubLLM()), run(llm=StubLLM())
    assert first.message == second.message
    assert first.results == second.results


# --- live events (on_event) -------------------------------------------------------------------------------


def _without_timings(result):
    data = result.to_dict()
    for step in data["trace"]:
        step.pop("started_at"), step.pop("duration_ms")
        step["outputs"].pop("latency_ms", None)
    return data


def test_on_event_reports_the_run_and_streams_the_stub_answer():
    events = []
    streamed = run(llm=StubLLM(), on_event=lambda name, data: events.append((name, data)))
    plain = run(llm=StubLLM())

    assert _without_timings(streamed) == _without_timings(plain)  # the same result with or without
    names = [name for name, _ in events]
    assert names[0] == "retrieval" and names[-1] == "llm.done"
    assert set(names[1:-1]) == {"llm.delta"} and len(names) > 4
    assert "".join(data["text"] for name, data in events if name == "llm.delta") == streamed.message
    assert events[0][1]["source"] == "vector"
    assert [book["id"] for book in events[0][1]["books"]] == ["1", "2"]
    assert events[-1][1]["usage"]["prompt_tokens"] == streamed.prompt_tokens
    assert events[-1][1]["error"] is None


def test_on_event_says_why_the_answer_is_degraded():
    events = []
    run(
        store=FakeStore(fail=True),
        llm=FakeLLM(error={"code": "timeout", "message": "slow"}),
        on_event=lambda name, data: events.append((name, data)),
    )
    degraded = [data for name, data in events if name == "degraded"]
    assert [d["why"] for d in degraded] == ["vector_store_unavailable", "llm_failed"]
    assert degraded[1]["error"]["code"] == "timeout"
    assert "llm.delta" not in [name for name, _ in events]


def test_a_cancel_between_deltas_stops_the_run():
    events, asked = [], []

    def is_cancelled():
        asked.append(1)
        return len([e for e in events if e[0] == "llm.delta"]) >= 2

    with pytest.raises(Cancelled):
        run(llm=StubLLM(), is_cancelled=is_cancelled, on_event=lambda name, data: events.append((name, data)))
    assert [name for name, _ in events].count("llm.delta") == 2
    assert "llm.done" not in [name for name, _ in events]
