"""agent.rate_limit: the provider's RPM/TPM limit (throttled-py's GCRA) and the shared pause, alone and
inside `OpenAICompatibleLLM` against the project's test openai_server. One process here (throttled-py's memory
store); tests/e2e/test_rate_limit_e2e.py proves it across worker processes on Redis."""

from __future__ import annotations

import threading
import time

from throttled.store import MemoryStore

from agent.config import LLMSettings
from agent.llm_factory import build_llm_runnable
from agent.rate_limit import ProviderRateLimiter, bucket_id

KEY = "sk-server-rate-0123456789"
CHAT = "/v1/chat/completions"


def limiter(**limits) -> ProviderRateLimiter:
    return ProviderRateLimiter(rpm=limits.get("rpm"), tpm=limits.get("tpm"), store=MemoryStore())


def test_bucket_is_a_hash_of_base_url_and_key():
    bucket = bucket_id("http://llm/v1", KEY)

    assert KEY not in bucket and len(bucket) == 32
    assert bucket != bucket_id("http://llm/v1", "sk-other-user-key")
    assert bucket != bucket_id("http://other/v1", KEY)
    assert bucket == bucket_id("http://llm/v1", KEY)


def test_requests_are_spaced_at_the_rate_with_a_burst_of_two():
    # 600 RPM: one request per 100 ms; two may go at once. (Wide enough intervals that a busy machine's
    # scheduling delays, tens of ms under CI's load, do not look like a missing burst.)
    limit = limiter(rpm=600)
    started = time.monotonic()
    granted = []
    for _ in range(12):
        assert limit.acquire("b", tokens=1, end=None)
        granted.append(time.monotonic() - started)

    assert granted[1] < 0.06  # the burst
    assert 0.95 <= granted[-1] <= 1.5  # ten intervals of 100 ms after the burst


def test_threads_of_one_process_share_the_bucket():
    limit = limiter(rpm=1200)
    granted: list[float] = []

    def caller():
        for _ in range(4):
            limit.acquire("b", tokens=1, end=None)
            granted.append(time.monotonic())

    threads = [threading.Thread(target=caller) for _ in range(3)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(granted) == 12
    assert max(granted) - started >= 0.45  # not 3 x the rate


def test_a_slot_beyond_the_deadline_is_refused_without_waiting_for_it():
    limit = limiter(rpm=60)  # one per second
    assert limit.acquire("b", tokens=1, end=None)
    assert limit.acquire("b", tokens=1, end=None)  # the burst of two

    started = time.monotonic()
    assert limit.acquire("b", tokens=1, end=time.monotonic() + 0.8) is False
    assert time.monotonic() - started < 0.4  # not the 0.8 s to the deadline, nor the 1 s to the slot
    assert limit.acquire("other-key", tokens=1, end=time.monotonic() + 0.3) is True  # its own bucket


def test_tokens_weigh_a_request_by_its_size():
    # 6,000 TPM: 100 tokens per second, 100 saved up at most.
    limit = limiter(tpm=6000)
    started = time.monotonic()

    assert limit.acquire("b", tokens=80, end=None)
    small = time.monotonic() - started
    assert limit.acquire("b", tokens=120, end=None)  # 20 left: 100 more take a second
    big = time.monotonic() - started

    assert small < 0.05
    assert 0.9 <= big <= 1.5
    assert limit.acquire("b", tokens=50, end=time.monotonic() + 0.2) is False


def test_a_pause_holds_every_caller_of_the_bucket():
    limit = limiter(rpm=6000)
    limit.pause("b", 0.4)
    started = time.monotonic()

    assert limit.acquire("b", tokens=1, end=None)
    assert time.monotonic() - started >= 0.35
    assert limit.acquire("b", tokens=1, end=time.monotonic() + 0.1)  # the pause is over


def test_a_store_failure_lets_the_call_through(caplog):
    class Down(MemoryStore):
        def get(self, key):
            raise ConnectionError("redis is down")

    limit = ProviderRateLimiter(rpm=60, tpm=None, store=Down())

    assert limit.acquire("b", tokens=1, end=time.monotonic() + 1)
    assert "llm rate limit unavailable (ConnectionError)" in caplog.text


# --- inside the LLM client ------------------------------------------------------------------------------


def runnable(openai_server, limit, **overrides):
    values = {
        "provider": "openai_compatible",
        "model": "m",
        "base_url": openai_server.base_url,
        "api_key": KEY,
        "timeout_sec": 2.0,
        "max_retries": 1,
        "retry_after_cap_sec": 2.0,
    }
    values.update(overrides)
    return build_llm_runnable(settings=LLMSettings(**values), limiter=limit, client_cache=False)


def parallel_invokes(llm, n: int) -> list[dict]:
    results: list[dict] = []
    threads = [
        threading.Thread(target=lambda: results.append(llm.invoke("hello", deadline=5))) for _ in range(n)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_calls_wait_for_their_slot_and_the_provider_never_answers_429(openai_server):
    # The provider allows 600 RPM, 10 at once (as providers quantise "600 RPM" to 10 per second; the test
    # server's own tests show it refusing beyond that). Twenty calls at once each wait their turn.
    llm = runnable(openai_server, limiter(rpm=600))
    llm.invoke("warm-up", deadline=5)  # imports and the first connection: seconds on a loaded machine
    openai_server.reset()
    openai_server.control(rate_rpm=600, rate_burst_sec=1.0)
    started = time.monotonic()

    results = parallel_invokes(llm, 20)

    assert [r["error"] for r in results] == [None] * 20
    stats = openai_server.stats()
    assert (stats["calls"], stats["faults_served"], stats["rate_limited"]) == (20, 0, 0)
    assert time.monotonic() - started >= 1.75  # 18 intervals of 100 ms after the burst of 2


def test_no_slot_before_the_deadline_ends_the_call_as_rate_limited(openai_server):
    limit = limiter(rpm=60)
    llm = runnable(openai_server, limit)
    llm.invoke("one", deadline=5)
    llm.invoke("two", deadline=5)

    result = llm.invoke("three", deadline=0.5)

    assert result["error"]["code"] == "rate_limited"
    assert "LLM_RATE_RPM" in result["error"]["message"]
    assert result["attempts"] == 0
    assert len(openai_server.requests(CHAT)) == 2  # the third never reached the provider


def test_a_429_with_retry_after_pauses_every_caller_of_the_key(openai_server):
    openai_server.control(fault="429", retry_after=1, fail_times=1)
    limit = limiter(rpm=6000)
    first, second = runnable(openai_server, limit), runnable(openai_server, limit)

    result = first.invoke("hello", deadline=5)
    started = time.monotonic()
    other = second.invoke("hello", deadline=5)  # another caller of the same key, after the 429

    assert result["error"] is None and result["attempts"] == 2
    assert other["error"] is None
    assert time.monotonic() - started < 0.5  # the pause had run out while `first` waited it
    times = [r["time"] for r in openai_server.requests(CHAT)]
    assert times[1] - times[0] >= 0.95  # the retry waited Retry-After


def test_a_pause_set_by_one_caller_is_felt_by_another_of_the_same_key(openai_server):
    limit = limiter(rpm=6000)
    llm = runnable(openai_server, limit)
    other_key = runnable(openai_server, limit, api_key="sk-another-key-000000")
    llm.invoke("warm-up", deadline=5)
    limit.pause(bucket_id(openai_server.base_url, KEY), 2.0)

    started = time.monotonic()
    assert other_key.invoke("hello", deadline=5)["error"] is None  # another key: its own bucket
    other_took = time.monotonic() - started
    assert llm.invoke("hello", deadline=5)["error"] is None
    own_took = time.monotonic() - started

    assert other_took < 1.5
    assert own_took >= 1.9
