"""Token streaming (agent/llm_factory/streaming.py) against the project's OpenAI-compatible test server: the same
result as `invoke`, usage from the last chunk, the retry budget, the deadline, cancellation, BYO keys."""

from __future__ import annotations

import time

import pytest

from agent.errors import Cancelled
from agent.llm_factory import StubLLM, build_llm_runnable, estimate_tokens, stream_llm
from agent.prompts import build_grounded_prompt
from agent.tests.test_llm_factory import CHAT, DUNE, MOBY, SERVER_KEY, USER_KEY, make_settings

COMPARED = ("content", "provider", "model", "prompt_tokens", "completion_tokens", "usage_estimated")
COMPARED += ("cost_usd", "cost_unknown", "attempts", "error")


def collect(llm, prompt, **kwargs):
    deltas: list[str] = []
    result = stream_llm(llm, prompt, on_delta=deltas.append, **kwargs)
    return result, deltas


def test_streamed_result_is_the_invoked_one(openai_server):
    llm = build_llm_runnable(settings=make_settings(openai_server))
    prompt = build_grounded_prompt("whales", [MOBY, DUNE], "en")

    invoked = llm.invoke(prompt)
    streamed, deltas = collect(llm, prompt)

    assert {k: streamed[k] for k in COMPARED} == {k: invoked[k] for k in COMPARED}
    assert streamed["error"] is None and streamed["usage_estimated"] is False  # usage from the last chunk
    assert len(deltas) > 3 and "".join(deltas) == invoked["content"]
    body = openai_server.requests(CHAT)[-1]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("temperature", [0.0, 1.3])
def test_llm_temperature_goes_with_every_call_streamed_or_not(openai_server, temperature):
    llm = build_llm_runnable(settings=make_settings(openai_server, temperature=temperature))

    llm.invoke("hello")
    collect(llm, "hello")

    bodies = [request["body"] for request in openai_server.requests(CHAT)]
    assert [body.get("stream", False) for body in bodies] == [False, True]
    assert [body["temperature"] for body in bodies] == [temperature, temperature]


def test_without_usage_in_the_stream_tokens_are_estimated(openai_server):
    openai_server.control(usage=False)
    llm = build_llm_runnable(settings=make_settings(openai_server))
    result, deltas = collect(llm, "hello there")
    assert result["usage_estimated"] is True
    assert result["prompt_tokens"] > 0 and result["completion_tokens"] > 0
    assert "".join(deltas) == result["content"]


def test_with_streaming_off_the_provider_gets_one_plain_call_and_its_usage_counts(openai_server):
    # LLM_STREAM=false: for servers that send no usage in a stream (llama-cpp-python's).
    llm = build_llm_runnable(settings=make_settings(openai_server, stream=False))
    result, deltas = collect(llm, "hello there")

    body = openai_server.requests(CHAT)[-1]["body"]
    assert not body.get("stream") and "stream_options" not in body
    assert result["error"] is None and result["usage_estimated"] is False
    assert deltas == [result["content"]]


def test_stub_streams_word_by_word():
    stub = StubLLM()
    prompt = build_grounded_prompt("ballenas", [MOBY, DUNE], "es")
    result, deltas = collect(stub, prompt)
    invoked = stub.invoke(prompt)
    assert {k: result[k] for k in COMPARED} == {k: invoked[k] for k in COMPARED}
    assert "".join(deltas) == invoked["content"]
    assert len(deltas) == len(invoked["content"].split())


def test_a_runnable_without_streaming_gives_one_delta():
    class Fake:
        def invoke(self, prompt, *, deadline=None):
            return {"content": "whole answer", "error": None}

    result, deltas = collect(Fake(), "hi")
    assert deltas == ["whole answer"] and result["content"] == "whole answer"


def test_a_failure_before_the_first_chunk_is_retried_within_the_budget(openai_server):
    openai_server.control(fault="500", fail_times=1)
    llm = build_llm_runnable(settings=make_settings(openai_server, max_retries=1))
    result, deltas = collect(llm, "hello")
    assert result["error"] is None and result["attempts"] == 2
    assert "".join(deltas) == result["content"]  # nothing streamed twice
    assert len(openai_server.requests(CHAT)) == 2


def test_a_stream_cut_after_text_is_not_retried(openai_server):
    openai_server.control(fault="stream_cut")
    llm = build_llm_runnable(settings=make_settings(openai_server, max_retries=3))
    result, deltas = collect(llm, build_grounded_prompt("whales", [MOBY, DUNE], "en"))
    assert deltas
    assert result["error"]["code"] == "connection_error"
    assert "streamed chunk" in result["error"]["message"]
    assert result["content"] == "" and result["attempts"] == 1
    assert len(openai_server.requests(CHAT)) == 1
    # The text that arrived was paid: its tokens (estimated, the usage chunk never came) and its cost.
    assert result["usage_estimated"] is True
    assert result["completion_tokens"] == estimate_tokens("".join(deltas)) > 0
    assert result["prompt_tokens"] > 0 and result["cost_usd"] > 0


def test_the_deadline_ends_a_slow_stream(openai_server):
    openai_server.control(stream_delay_ms=150)
    llm = build_llm_runnable(settings=make_settings(openai_server, timeout_sec=30.0, max_retries=3))
    started = time.monotonic()
    result, deltas = collect(llm, build_grounded_prompt("whales", [MOBY, DUNE], "en"), deadline=0.8)
    assert time.monotonic() - started < 1.6
    assert result["error"]["code"] == "timeout"
    assert len(openai_server.requests(CHAT)) == 1  # text was streamed: no retry


def test_a_cancel_from_on_delta_closes_the_stream(openai_server):
    openai_server.control(stream_delay_ms=100)
    llm = build_llm_runnable(settings=make_settings(openai_server))
    seen: list[str] = []

    def on_delta(text):
        seen.append(text)
        if len(seen) == 2:
            raise Cancelled("The job was cancelled.")

    started = time.monotonic()
    with pytest.raises(Cancelled) as cancel:
        stream_llm(llm, build_grounded_prompt("whales", [MOBY, DUNE], "en"), on_delta=on_delta)
    assert time.monotonic() - started < 1.0  # the remaining chunks were not waited for
    assert len(seen) == 2 and len(openai_server.requests(CHAT)) == 1
    # The two chunks were paid: the cancel carries their cost for the budget and the job's row.
    spent = cancel.value.llm_result
    assert spent["completion_tokens"] == estimate_tokens("".join(seen)) and spent["prompt_tokens"] > 0
    assert spent["cost_usd"] > 0 and spent["usage_estimated"] is True


def test_a_failure_before_any_text_costs_nothing(openai_server):
    openai_server.control(fault="500")
    llm = build_llm_runnable(settings=make_settings(openai_server, max_retries=0))
    result, deltas = collect(llm, "hello")
    assert deltas == [] and result["error"]["code"] and result["cost_usd"] == 0


def test_a_cancel_while_a_whole_answer_is_delivered_carries_the_calls_result():
    # A runnable that cannot stream made its whole call before the text was passed on: all of it was paid.
    class Whole:
        def invoke(self, prompt, *, deadline=None):
            return {"content": "whole answer", "error": None, "cost_usd": 0.25}

    def cancel(text):
        raise Cancelled("The job was cancelled.")

    with pytest.raises(Cancelled) as stopped:
        stream_llm(Whole(), "hi", on_delta=cancel)
    assert stopped.value.llm_result["cost_usd"] == 0.25


def test_byo_key_is_sent_and_never_in_errors(openai_server):
    openai_server.control(fault="401")
    settings = make_settings(openai_server, cost_mode="byo_key", api_key=None)
    llm = build_llm_runnable(USER_KEY, settings=settings)
    result, deltas = collect(llm, "hello")
    assert deltas == []
    assert result["error"]["code"] == "auth_failed"
    assert USER_KEY not in str(result) and SERVER_KEY not in str(result)
    assert openai_server.requests(CHAT)[-1]["headers"]["Authorization"] == f"Bearer {USER_KEY}"


def test_nul_characters_of_a_model_never_reach_the_result(openai_server):
    # No database stores NUL in text: PostgreSQL refused the job's finish, and each retry was paid again.
    openai_server.control(content="Moby\x00-Dick, a whale\x00 of a book.")
    llm = build_llm_runnable(settings=make_settings(openai_server))
    invoked = llm.invoke("hello")
    streamed, _ = collect(llm, "hello")
    assert invoked["content"] == streamed["content"] == "Moby-Dick, a whale of a book."


def test_a_providers_error_message_is_stored_without_nul_characters_or_the_key():
    from agent.llm_factory.scrub import scrub_secrets

    message = "bad request \x00near\x00 sk-abcdefghijklmnop and key-123"
    assert scrub_secrets(message, "key-123") == "bad request near [REDACTED] and [REDACTED]"
