"""build_llm_runnable, StubLLM and OpenAICompatibleLLM.

The seed's four cases first; then every fault through the real `openai` client against the project's
test server on 127.0.0.1, counting upstream calls at the server to prove the retry budget.
"""

import asyncio
import logging
import socket
import sys
import time
from types import SimpleNamespace

import openai
import pytest

from agent.config import LLMSettings
from agent.cost_policy import CostDecision
from agent.errors import ImproperlyConfigured
from agent.llm_factory import (
    POOL_SHARD_SIZE,
    RESULT_KEYS,
    OpenAICompatibleLLM,
    StubLLM,
    build_llm_runnable,
    compute_cost,
    estimate_prompt_tokens,
    estimate_tokens,
)
from agent.prompts import build_grounded_prompt
from agent.types import Hit
from openai_testserver import start_in_thread

SERVER_KEY = "sk-server-0123456789abcdef"
USER_KEY = "sk-user-byo-fedcba9876543210"
MODEL = "llama-3-8b-instruct"
CHAT = "/v1/chat/completions"

MOBY = Hit(
    id="12",
    title="Moby Dick",
    author="Herman Melville",
    year=1851,
    score=0.9,
    metadata={
        "genres": ["adventure"],
        "synopsis": "Ishmael joins the hunt for a white whale. It ends badly.",
    },
)
DUNE = Hit(
    id="7", title="Dune", author="Frank Herbert", year=1965, score=0.4, metadata={"genres": ["sci-fi"]}
)


@pytest.fixture(scope="module")
def server():
    with start_in_thread() as handle:
        yield handle


@pytest.fixture(autouse=True)
def fresh_server(request):
    if "server" in request.fixturenames:
        request.getfixturevalue("server").reset()


def make_settings(server, **overrides):
    values = {
        "provider": "openai_compatible",
        "model": MODEL,
        "base_url": server.base_url,
        "api_key": SERVER_KEY,
        "timeout_sec": 2.0,
        "max_retries": 1,
        "retry_after_cap_sec": 1.0,
        "prices": {MODEL: (0.5, 1.5)},
    }
    values.update(overrides)
    return LLMSettings(**values)


def chat_calls(server):
    return len(server.requests(CHAT))


# --- the seed's four cases ------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["stub", "local_stub", "test"])
def test_stub_provider_returns_stub_llm(provider):
    llm = build_llm_runnable(settings=LLMSettings(provider=provider, api_key=SERVER_KEY))

    assert isinstance(llm, StubLLM)
    assert llm.decision == CostDecision(mode="paid", key_source="none", provider="stub", model="stub")


def test_paid_without_key_falls_back_to_stub_with_one_warning(caplog):
    caplog.set_level(logging.WARNING)

    llm = build_llm_runnable(
        settings=LLMSettings(provider="openai_compatible", cost_mode="paid", api_key=None)
    )

    assert isinstance(llm, StubLLM)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_byo_key_without_key_raises():
    with pytest.raises(ImproperlyConfigured, match="X-LLM-API-Key"):
        build_llm_runnable(None, settings=LLMSettings(cost_mode="byo_key"))


def test_openai_compatible_with_a_fake_client_makes_no_network(monkeypatch):
    made = []

    class FakeOpenAI:
        def __init__(self, **kwargs):
            made.append(kwargs)
            self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

        def create(self, **kwargs):
            self.request = kwargs
            message = SimpleNamespace(role="assistant", content="fake answer")
            usage = SimpleNamespace(prompt_tokens=7, completion_tokens=3)
            return SimpleNamespace(choices=[SimpleNamespace(message=message)], usage=usage)

    def no_network(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(openai, "OpenAI", FakeOpenAI)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    settings = LLMSettings(base_url="http://llm.invalid/v1", api_key=SERVER_KEY, model="gpt-4o-mini")

    llm = build_llm_runnable(settings=settings, client_cache=False)
    result = llm.invoke("hello")

    assert isinstance(llm, OpenAICompatibleLLM)
    assert made[0]["base_url"] == "http://llm.invalid/v1"
    assert made[0]["api_key"] == SERVER_KEY
    assert made[0]["max_retries"] == 0
    assert result["content"] == "fake answer"
    assert (result["prompt_tokens"], result["completion_tokens"], result["usage_estimated"]) == (7, 3, False)
    assert result["error"] is None


# --- cost modes end to end --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allow", "user_key", "expected_bearer"),
    [
        (True, USER_KEY, USER_KEY),
        (True, None, SERVER_KEY),
        (False, USER_KEY, SERVER_KEY),
        (False, None, SERVER_KEY),
    ],
)
def test_hybrid_sends_the_chosen_key(server, allow, user_key, expected_bearer):
    llm = build_llm_runnable(
        user_key, settings=make_settings(server, cost_mode="hybrid", allow_byo_key=allow)
    )

    result = llm.invoke("hello")

    assert result["error"] is None
    assert server.requests(CHAT)[0]["headers"]["Authorization"] == f"Bearer {expected_bearer}"
    assert llm.decision.key_source == ("user" if expected_bearer == USER_KEY else "server")


@pytest.mark.parametrize(("allow", "user_key"), [(True, None), (False, USER_KEY), (False, None)])
def test_hybrid_without_usable_key_is_the_stub(allow, user_key):
    settings = LLMSettings(cost_mode="hybrid", allow_byo_key=allow, api_key=None)

    assert isinstance(build_llm_runnable(user_key, settings=settings), StubLLM)


def test_a_recorded_decision_is_reused_and_needs_its_key(server):
    decision = CostDecision(mode="byo_key", key_source="user", provider="openai_compatible", model=MODEL)
    settings = make_settings(server, cost_mode="byo_key")

    llm = build_llm_runnable(USER_KEY, settings=settings, decision=decision)

    assert llm.decision is decision
    with pytest.raises(ImproperlyConfigured, match="needs the user API key"):
        build_llm_runnable(None, settings=settings, decision=decision)


def test_missing_openai_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)

    with pytest.raises(ImproperlyConfigured, match=r"install openai>=1\.30\.0"):
        build_llm_runnable(settings=LLMSettings(api_key=SERVER_KEY))


# --- success, usage and cost ---------------------------------------------------------------------------


def test_success_returns_every_key(server):
    llm = build_llm_runnable(settings=make_settings(server))

    result = llm.invoke(build_grounded_prompt("a book about whales", [MOBY, DUNE], "en"))

    assert tuple(result) == RESULT_KEYS
    assert result["content"] == "Recommended: [id=12] Moby Dick; [id=7] Dune"
    assert (result["provider"], result["model"], result["attempts"], result["error"]) == (
        "openai_compatible",
        MODEL,
        1,
        None,
    )
    assert result["latency_ms"] > 0
    body = server.requests(CHAT)[0]["body"]
    assert (body["model"], body["max_tokens"]) == (MODEL, 512)
    # The SDK's client posts exactly the body we built (no typed `create()` in between), messages intact.
    assert set(body) == {"model", "messages", "max_tokens"}
    assert body["messages"] == build_grounded_prompt("a book about whales", [MOBY, DUNE], "en")


def test_reported_usage_and_cost(server):
    llm = build_llm_runnable(settings=make_settings(server))

    result = llm.invoke("hello world")

    # The test server counts words: "hello world" -> 2, "Echo: hello world" -> 3.
    assert (result["prompt_tokens"], result["completion_tokens"], result["usage_estimated"]) == (2, 3, False)
    assert result["cost_usd"] == 5.5e-06  # (2 * 0.5 + 3 * 1.5) / 1e6
    assert result["cost_unknown"] is False


def test_missing_usage_is_estimated_offline(server):
    server.control(usage=False)
    llm = build_llm_runnable(settings=make_settings(server))

    result = llm.invoke("hello world")

    # 11 chars -> 3 tokens + 4 per message + 3 priming; "Echo: hello world" 17 chars -> 5 tokens.
    assert (result["prompt_tokens"], result["completion_tokens"], result["usage_estimated"]) == (10, 5, True)
    assert result["cost_usd"] == 1.25e-05  # (10 * 0.5 + 5 * 1.5) / 1e6


def test_unpriced_model_costs_zero_and_says_so(server):
    llm = build_llm_runnable(settings=make_settings(server, prices={}))

    result = llm.invoke("hello world")

    assert (result["cost_usd"], result["cost_unknown"]) == (0.0, True)


def test_estimators_and_cost_table():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert (
        estimate_prompt_tokens([{"role": "system", "content": "abcd"}, {"role": "user", "content": ""}]) == 12
    )
    assert compute_cost("gpt-4o-mini", 1_000_000, 1_000_000, {"gpt-4o-mini": (0.15, 0.6)}) == (0.75, False)
    assert compute_cost("gpt-4o-mini", 1000, 500, {"gpt-4o-mini": (0.15, 0.6)}) == (0.00045, False)
    assert compute_cost("other", 1000, 500, {"gpt-4o-mini": (0.15, 0.6)}) == (0.0, True)


# --- faults through the real client --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code", "calls"),
    [
        ("429", "rate_limited", 2),
        ("500", "provider_error", 2),
        ("401", "auth_failed", 1),
        ("403", "auth_failed", 1),
        ("402", "quota_exceeded", 1),
        ("insufficient_quota", "quota_exceeded", 1),
        ("malformed", "bad_response", 1),
        ("empty_choices", "bad_response", 1),
        ("no_content", "bad_response", 1),
    ],
)
def test_faults_map_to_error_codes_within_the_retry_budget(server, fault, code, calls):
    server.control(fault=fault, retry_after=0.1)
    llm = build_llm_runnable(settings=make_settings(server, max_retries=1))

    result = llm.invoke("hello")

    assert result["error"]["code"] == code
    assert result["content"] == ""
    assert (result["prompt_tokens"], result["completion_tokens"], result["cost_usd"]) == (0, 0, 0.0)
    assert result["attempts"] == calls
    assert chat_calls(server) == calls


@pytest.mark.parametrize("fault", ["hang", "slow_drip"])
def test_deadline_caps_a_stuck_call(server, fault):
    server.control(fault=fault, drip_interval_ms=50)
    llm = build_llm_runnable(settings=make_settings(server, timeout_sec=30.0, max_retries=3))

    started = time.monotonic()
    result = llm.invoke("hello", deadline=0.8)
    elapsed = time.monotonic() - started

    assert result["error"]["code"] == "timeout"
    assert 0.8 <= elapsed < 1.8
    assert chat_calls(server) == 1


def test_late_headers_then_a_stalled_body_still_end_at_the_deadline(server):
    # Headers and one byte at 0.6 s, then nothing: body reads get only what is left of the budget.
    server.control(fault="slow_drip", latency_ms=600, drip_interval_ms=5000)
    llm = build_llm_runnable(settings=make_settings(server, timeout_sec=30.0))

    started = time.monotonic()
    sync_result = llm.invoke("hello", deadline=0.8)
    sync_elapsed = time.monotonic() - started
    started = time.monotonic()
    async_result = asyncio.run(llm.ainvoke("hello", deadline=0.8))
    async_elapsed = time.monotonic() - started

    assert (sync_result["error"]["code"], async_result["error"]["code"]) == ("timeout", "timeout")
    # Without the remaining budget on body reads, each call would wait for the next byte (5.6 s).
    assert 0.8 <= sync_elapsed < 2.0
    assert 0.8 <= async_elapsed < 2.0


def test_timeouts_are_retried_once_within_the_budget(server):
    server.control(fault="hang")
    llm = build_llm_runnable(settings=make_settings(server, timeout_sec=0.3, max_retries=1))

    result = llm.invoke("hello")

    assert (result["error"]["code"], result["attempts"]) == ("timeout", 2)
    assert chat_calls(server) == 2


def test_connection_errors_are_reported(server):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(server, base_url=f"http://127.0.0.1:{port}/v1", max_retries=1)

    result = build_llm_runnable(settings=settings).invoke("hello")

    assert (result["error"]["code"], result["attempts"]) == ("connection_error", 2)
    assert result["error"]["message"] == f"Could not reach the LLM provider at http://127.0.0.1:{port}/v1."


@pytest.mark.parametrize("retries", [0, 2])
def test_llm_max_retries_bounds_upstream_calls(server, retries):
    server.control(fault="500")
    llm = build_llm_runnable(settings=make_settings(server, max_retries=retries))

    result = llm.invoke("hello")

    assert result["error"]["code"] == "provider_error"
    assert chat_calls(server) == 1 + retries


def test_retry_after_is_honoured_then_the_call_succeeds(server):
    server.control(fault="429", retry_after=0.3, fail_times=1)
    llm = build_llm_runnable(settings=make_settings(server))

    result = llm.invoke("hello")

    assert (result["error"], result["attempts"], result["content"]) == (None, 2, "Echo: hello")
    first, second = server.requests(CHAT)
    assert second["time"] - first["time"] >= 0.3


def test_retry_after_beyond_the_cap_is_not_waited_for(server):
    server.control(fault="429", retry_after=30)
    llm = build_llm_runnable(settings=make_settings(server, retry_after_cap_sec=1.0))

    started = time.monotonic()
    result = llm.invoke("hello")

    assert (result["error"]["code"], result["retry_after_sec"]) == ("rate_limited", 30.0)
    assert time.monotonic() - started < 0.9  # no 1 s wait: it gave up at once
    assert chat_calls(server) == 1


def test_retry_after_beyond_the_deadline_is_not_waited_for(server):
    server.control(fault="429", retry_after=1)
    llm = build_llm_runnable(settings=make_settings(server, retry_after_cap_sec=5.0))

    started = time.monotonic()
    result = llm.invoke("hello", deadline=0.5)

    assert result["error"]["code"] == "rate_limited"
    assert time.monotonic() - started < 0.9  # no 1 s wait: it gave up at once
    assert chat_calls(server) == 1


@pytest.mark.parametrize("deadline", [0, -1.5])
def test_an_expired_deadline_returns_timeout_without_calling(server, deadline):
    llm = build_llm_runnable(settings=make_settings(server))

    result = llm.invoke("hello", deadline=deadline)

    assert result["error"] == {
        "code": "timeout",
        "message": "The job deadline had passed before the LLM call.",
    }
    assert (result["attempts"], chat_calls(server)) == (0, 0)


# --- keys never leak -----------------------------------------------------------------------------------


def test_a_byo_key_reaches_the_server_but_never_logs_or_errors(server, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx", "httpx2", "httpcore", "httpcore2", "agent"):
        caplog.set_level(logging.DEBUG, logger=name)
    settings = make_settings(server, cost_mode="byo_key")
    llm = build_llm_runnable(USER_KEY, settings=settings)

    ok = llm.invoke("hello")
    server.control(fault="401")  # the test server echoes the key in its error message
    failed = llm.invoke("hello")
    async_failed = asyncio.run(llm.ainvoke("hello"))

    assert ok["error"] is None
    assert failed["error"]["code"] == "auth_failed"
    assert failed["error"]["message"] == (
        "HTTP 401 from the LLM provider: Error code: 401 - Incorrect API key provided: [REDACTED]."
    )
    assert async_failed["error"] == failed["error"]
    assert [r["headers"]["Authorization"] for r in server.requests(CHAT)] == [f"Bearer {USER_KEY}"] * 3
    assert len(caplog.records) > 3
    assert USER_KEY not in caplog.text
    assert all(USER_KEY not in r.getMessage() and USER_KEY not in str(r.args) for r in caplog.records)
    assert USER_KEY not in repr(llm)
    assert USER_KEY not in repr(llm.decision)


# --- clients are shared ----------------------------------------------------------------------------------


@pytest.fixture
def empty_client_cache():
    """The process-wide client cache as a fresh worker has it: no pool left by an earlier test of this
    module (which test ran before depends on how xdist split the module; a pool holding two idle
    connections to this server answered the next requests on either)."""
    from agent.llm_factory import transport

    transport.CLIENTS.reset()


def test_runnables_share_one_connection_pool(server, empty_client_cache):
    settings = make_settings(server, http_pool_size=POOL_SHARD_SIZE)
    decision = CostDecision(mode="paid", key_source="server", provider="openai_compatible", model=MODEL)

    for key in (SERVER_KEY, USER_KEY, SERVER_KEY):
        build_llm_runnable(
            settings=make_settings(server, api_key=key, http_pool_size=POOL_SHARD_SIZE), decision=decision
        ).invoke("hello")
    build_llm_runnable(settings=settings).invoke("hello")

    peers = {tuple(r["peer"]) for r in server.requests(CHAT)}
    assert len(peers) == 1  # one kept-alive connection served every runnable and both keys


def test_a_large_pool_is_split_into_shards_taken_in_turn(server, empty_client_cache):
    settings = make_settings(server, http_pool_size=2 * POOL_SHARD_SIZE)

    for _ in range(4):
        build_llm_runnable(settings=settings).invoke("hello")

    peers = [tuple(r["peer"]) for r in server.requests(CHAT)]
    assert len(set(peers)) == 2
    assert peers[0] == peers[2] and peers[1] == peers[3]


# --- ainvoke ---------------------------------------------------------------------------------------------


def test_ainvoke_success(server):
    llm = build_llm_runnable(settings=make_settings(server))

    result = asyncio.run(llm.ainvoke(build_grounded_prompt("libros sobre ballenas", [MOBY], "es")))

    assert (result["content"], result["error"], result["usage_estimated"]) == (
        "Recommended: [id=12] Moby Dick",
        None,
        False,
    )


def test_ainvoke_retries_a_429_then_succeeds(server):
    server.control(fault="429", retry_after=0.1, fail_times=1)
    llm = build_llm_runnable(settings=make_settings(server))

    result = asyncio.run(llm.ainvoke("hello"))

    assert (result["error"], result["attempts"], chat_calls(server)) == (None, 2, 2)


@pytest.mark.parametrize("fault", ["hang", "slow_drip"])
def test_ainvoke_deadline_caps_a_stuck_call(server, fault):
    server.control(fault=fault, drip_interval_ms=50)
    llm = build_llm_runnable(settings=make_settings(server, timeout_sec=30.0))

    started = time.monotonic()
    result = asyncio.run(llm.ainvoke("hello", deadline=0.8))

    assert result["error"]["code"] == "timeout"
    assert 0.8 <= time.monotonic() - started < 1.8
    assert chat_calls(server) == 1


def test_ainvoke_with_an_expired_deadline_does_not_call(server):
    llm = build_llm_runnable(settings=make_settings(server))

    result = asyncio.run(llm.ainvoke("hello", deadline=0))

    assert (result["error"]["code"], chat_calls(server)) == ("timeout", 0)


def test_ainvoke_without_client_cache_closes_its_client(server):
    llm = build_llm_runnable(settings=make_settings(server), client_cache=False)

    first = asyncio.run(llm.ainvoke("one"))
    second = asyncio.run(llm.ainvoke("two"))

    assert (first["content"], second["content"]) == ("Echo: one", "Echo: two")


# --- the stub --------------------------------------------------------------------------------------------


def test_stub_answers_in_spanish_with_the_books_it_was_shown():
    result = StubLLM().invoke(build_grounded_prompt("libros sobre ballenas", [MOBY, DUNE], "es"))

    assert result["content"] == (
        "Según el catálogo, te recomiendo:\n"
        "1. «Moby Dick», de Herman Melville (1851): Ishmael joins the hunt for a white whale. [id=12]\n"
        "2. «Dune», de Frank Herbert (1965): Géneros: sci-fi. [id=7]"
    )
    assert (result["provider"], result["model"], result["error"]) == ("stub", "stub", None)
    assert (result["usage_estimated"], result["cost_usd"], result["cost_unknown"], result["attempts"]) == (
        True,
        0.0,
        False,
        0,
    )
    assert result["completion_tokens"] == estimate_tokens(result["content"])


def test_stub_answers_in_english_and_detects_the_language_without_a_tag():
    messages = [
        {"role": "user", "content": "<question>\na book about whales\n</question>\n<books>\n</books>"}
    ]

    assert (
        StubLLM().invoke(messages)["content"] == "I found no books in the catalogue that match your question."
    )


def test_stub_with_no_books_says_so_in_spanish():
    result = StubLLM().invoke(build_grounded_prompt("libros de dragones", [], "es"))

    assert result["content"] == "No encontré libros en el catálogo que coincidan con tu consulta."


def test_stub_echoes_a_plain_prompt_and_is_deterministic():
    first = StubLLM().invoke("hola   mundo")
    second = asyncio.run(StubLLM().ainvoke("hola   mundo"))

    assert first["content"] == second["content"] == "Stub answer to: hola mundo"
    assert first["prompt_tokens"] == estimate_prompt_tokens([{"role": "user", "content": "hola   mundo"}])


def test_stub_honours_an_expired_deadline():
    result = StubLLM().invoke("hola", deadline=0)

    assert result["error"]["code"] == "timeout"
    assert result["content"] == ""


def test_a_prompt_of_the_wrong_type_is_a_caller_bug():
    with pytest.raises(TypeError):
        StubLLM().invoke(42)
