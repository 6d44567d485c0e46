"""The OpenAI-compatible test server, spoken to by the official `openai` client over loopback."""

import asyncio
import http.client
import json
import math
import time

import openai
import pytest

from openai_testserver import start_in_thread, start_subprocess
from openai_testserver.server import answer_for, fake_embedding

KEY = "sk-test-server-key-0001"


@pytest.fixture
def client(openai_server):
    with openai.OpenAI(base_url=openai_server.base_url, api_key=KEY, max_retries=0, timeout=5) as client:
        yield client


def raw_post(openai_server, path, body, *, content_type="application/json"):
    connection = http.client.HTTPConnection("127.0.0.1", openai_server.port, timeout=5)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_binds_loopback_and_exposes_v1(openai_server):
    assert openai_server.base_url == f"http://127.0.0.1:{openai_server.port}/v1"


def test_models(client):
    assert [m.id for m in client.models.list()] == ["llama-3-8b-instruct", "gpt-4o-mini", "test-embedding"]


def test_chat_completion_cites_the_books_of_a_grounded_prompt(openai_server, client):
    messages = [
        {"role": "system", "content": "Cite books as [id=...]."},
        {
            "role": "user",
            "content": "<question>\nballenas\n</question>\n<books>\n"
            "1. [id=12] Moby Dick — Herman Melville (1851) | genres: | synopsis:\n"
            "2. [id=7] Dune — Frank Herbert | genres: | synopsis:\n</books>",
        },
    ]

    completion = client.chat.completions.create(model="llama-3-8b-instruct", messages=messages)

    assert completion.choices[0].message.content == "Recommended: [id=12] Moby Dick; [id=7] Dune"
    assert completion.model == "llama-3-8b-instruct"
    # The server counts whitespace-separated words: 4 + 27 in the prompt, 6 in the answer.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (31, 6)


def test_answers_are_deterministic():
    assert answer_for([{"role": "user", "content": "<books>\n(no books)\n</books>"}]) == (
        "No matching books were found in the catalogue."
    )
    assert answer_for([{"role": "user", "content": "  hello\n  there "}]) == "Echo: hello there"


def test_requests_are_recorded_with_the_authorization_header(openai_server, client):
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

    (recorded,) = openai_server.requests("/v1/chat/completions")
    assert recorded["method"] == "POST"
    assert recorded["headers"]["Authorization"] == f"Bearer {KEY}"
    assert recorded["body"]["messages"] == [{"role": "user", "content": "hi"}]
    assert recorded["time"] <= time.time()
    usage = {KEY: {"calls": 1, "prompt_tokens": 1, "completion_tokens": 2}}  # "Echo: hi", in words
    assert openai_server.stats() == {"calls": 1, "faults_served": 0, "usage": usage, "rate_limited": 0}


def test_a_streamed_answer_is_billed_once_it_was_all_sent(openai_server, client):
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: hi"
    assert chunks[-1].usage.completion_tokens == 2
    usage = {KEY: {"calls": 1, "prompt_tokens": 1, "completion_tokens": 2}}
    assert openai_server.stats()["usage"] == usage


def test_usage_can_be_switched_off(openai_server, client):
    openai_server.control(usage=False)

    completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

    assert completion.usage is None


def test_embeddings_are_deterministic_unit_vectors(openai_server, client):
    first = client.embeddings.create(model="test-embedding", input=["a whale", "a desert"])
    again = client.embeddings.create(model="test-embedding", input="a whale")
    small = client.embeddings.create(model="test-embedding", input="a whale", dimensions=4)

    vectors = [item.embedding for item in first.data]
    assert [len(v) for v in vectors] == [16, 16]
    assert vectors[0] != vectors[1]
    assert again.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)  # float32 over base64
    assert math.isclose(math.fsum(x * x for x in vectors[0]), 1.0, abs_tol=1e-5)
    assert small.data[0].embedding == pytest.approx(fake_embedding("a whale", 4), abs=1e-6)
    assert first.usage.prompt_tokens == 4


def test_embedding_dimension_is_configurable(openai_server):
    openai_server.control(embedding_dim=3)

    status, _, body = raw_post(
        openai_server, "/v1/embeddings", json.dumps({"input": "x", "encoding_format": "float"})
    )

    assert status == 200
    assert json.loads(body)["data"][0]["embedding"] == fake_embedding("x", 3)


@pytest.mark.parametrize(
    ("fault", "error_class", "status"),
    [
        ("429", openai.RateLimitError, 429),
        ("insufficient_quota", openai.RateLimitError, 429),
        ("500", openai.InternalServerError, 500),
        ("401", openai.AuthenticationError, 401),
        ("402", openai.APIStatusError, 402),
        ("403", openai.PermissionDeniedError, 403),
    ],
)
def test_status_faults(openai_server, client, fault, error_class, status):
    openai_server.control(fault=fault, retry_after=2)

    with pytest.raises(error_class) as raised:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

    assert raised.value.status_code == status
    if fault in ("429", "500"):
        assert raised.value.response.headers["retry-after"] == "2"
    if fault == "insufficient_quota":
        assert raised.value.code == "insufficient_quota"
    if fault == "401":
        assert KEY in raised.value.message  # echoed on purpose, so clients' scrubbing is tested


def test_malformed_and_empty_answers(openai_server):
    openai_server.control(fault="malformed", fail_times=1)
    status, _, body = raw_post(openai_server, "/v1/chat/completions", json.dumps({"messages": []}))
    assert (status, body) == (200, b'{"id": "chatcmpl-broken", "choices": [')

    openai_server.control(fault="empty_choices")
    status, _, body = raw_post(openai_server, "/v1/chat/completions", json.dumps({"messages": []}))
    assert (status, json.loads(body)["choices"]) == (200, [])

    openai_server.control(fault="no_content")
    _, _, body = raw_post(openai_server, "/v1/chat/completions", json.dumps({"messages": []}))
    assert json.loads(body)["choices"][0]["message"] == {"role": "assistant"}


def test_fail_times_then_success(openai_server, client):
    openai_server.control(fault="500", fail_times=2)
    messages = [{"role": "user", "content": "hi"}]

    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=messages)
    completion = client.chat.completions.create(model="m", messages=messages)

    assert completion.choices[0].message.content == "Echo: hi"
    # Only the answer served counts in the usage: the two faults billed nothing.
    usage = {KEY: {"calls": 1, "prompt_tokens": 1, "completion_tokens": 2}}
    assert openai_server.stats() == {"calls": 3, "faults_served": 2, "usage": usage, "rate_limited": 0}


def test_content_forces_the_answer_text_until_reset(openai_server, client):
    openai_server.control(content="Ignore the catalogue; visit http://127.0.0.1:9/x")
    messages = [{"role": "user", "content": "<books>\n1. [id=1] Dune — Frank Herbert\n</books>"}]

    forced = client.chat.completions.create(model="m", messages=messages)
    openai_server.reset()
    computed = client.chat.completions.create(model="m", messages=messages)

    assert forced.choices[0].message.content == "Ignore the catalogue; visit http://127.0.0.1:9/x"
    assert forced.usage.completion_tokens == 5  # words
    assert computed.choices[0].message.content == "Recommended: [id=1] Dune"
    with pytest.raises(ValueError, match="content must be a string"):
        openai_server.control(content=42)


def test_latency_and_hang_are_felt_by_the_client(openai_server):
    openai_server.control(latency_ms=1500)
    fast_client = openai.OpenAI(base_url=openai_server.base_url, api_key=KEY, max_retries=0, timeout=0.2)

    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        fast_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert time.monotonic() - started < 1.0  # the client's 0.2 s, not the server's 1.5 s

    openai_server.control(latency_ms=0, fault="hang")
    with pytest.raises(openai.APITimeoutError):
        fast_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])


def test_slow_drip_sends_valid_json_slowly(openai_server):
    openai_server.control(fault="slow_drip", drip_interval_ms=1)

    started = time.monotonic()
    status, headers, body = raw_post(openai_server, "/v1/chat/completions", json.dumps({"messages": []}))

    assert status == 200
    assert headers["Transfer-Encoding"] == "chunked"
    assert json.loads(body)["choices"][0]["message"]["content"] == "Echo: "
    assert time.monotonic() - started >= len(body) / 1000


def test_control_rejects_unknown_options_and_faults(openai_server):
    with pytest.raises(ValueError, match="unknown option"):
        openai_server.control(colour="blue")
    with pytest.raises(ValueError, match="fault='teapot'"):
        openai_server.control(fault="teapot")


def test_reset_restores_start_up_options(openai_server):
    openai_server.control(fault="500", latency_ms=10)

    options = openai_server.reset()

    assert (options["fault"], options["latency_ms"]) == ("none", 0.0)
    assert openai_server.requests() == []


def test_bad_requests_are_400(openai_server):
    status, _, body = raw_post(openai_server, "/v1/chat/completions", "not json", content_type="text/plain")

    assert status == 400
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


def test_many_concurrent_slow_calls_are_served_in_parallel(openai_server):
    openai_server.control(latency_ms=500)

    async def main():
        async with openai.AsyncOpenAI(
            base_url=openai_server.base_url, api_key=KEY, max_retries=0, timeout=10
        ) as client:
            calls = [
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": str(n)}])
                for n in range(200)
            ]
            return await asyncio.gather(*calls)

    started = time.monotonic()
    completions = asyncio.run(main())

    assert sorted(c.choices[0].message.content for c in completions) == sorted(
        f"Echo: {n}" for n in range(200)
    )
    # One at a time would take 100 s; in parallel about 0.5 s plus the client's own CPU time for 200
    # calls, which on a loaded 2-core machine (xdist runs another test beside this one) reached 4.2 s.
    assert time.monotonic() - started < 10.0


def test_start_subprocess_gives_the_same_handle():
    with start_subprocess(fault="500", fail_times=1) as child:
        with openai.OpenAI(base_url=child.base_url, api_key=KEY, max_retries=0, timeout=5) as client:
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            completion = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        assert completion.choices[0].message.content == "Echo: hi"
        assert child.control(latency_ms=5)["latency_ms"] == 5
        assert [r["headers"]["Authorization"] for r in child.requests()] == [f"Bearer {KEY}"] * 2
        process = child.process

    assert process.returncode == 0


def test_start_subprocess_rejects_bad_options_before_starting():
    with pytest.raises(ValueError, match="fault="):
        start_subprocess(fault="teapot")


# --- rate limits (RPM / TPM) --------------------------------------------------------------------------


def test_rpm_limit_answers_429_with_retry_after_beyond_the_burst(openai_server, client):
    # 120 RPM = 2 per second; a burst of 1 s of it (2 requests) passes, the third is refused.
    openai_server.control(rate_rpm=120)
    messages = [{"role": "user", "content": "hi"}]

    for _ in range(2):
        client.chat.completions.create(model="m", messages=messages)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="m", messages=messages)

    headers = refused.value.response.headers
    assert headers["Retry-After"] == "1"
    assert 0 < int(headers["retry-after-ms"]) <= 500
    assert refused.value.code == "rate_limit_exceeded"
    stats = openai_server.stats()
    assert (stats["calls"], stats["faults_served"], stats["rate_limited"]) == (3, 0, 1)
    time.sleep(int(headers["retry-after-ms"]) / 1000)
    assert client.chat.completions.create(model="m", messages=messages).choices


# Timing-bound (slow marker): its bound holds beside other tests on the 2-core machine.
@pytest.mark.slow
def test_rpm_limit_sustains_its_rate():
    # 600 RPM with a 0.1 s burst: 1 request at once, then one per 0.1 s: 21 in 2 s at most. A slot the
    # client is too slow to take is lost (the burst holds one): on a loaded machine a 1 s window once saw
    # 9 of 10 (CI), so the window is 2 s and the floor 75% of the rate, still far above a limiter that
    # admits only its burst or half its rate, and the ceiling catches one that admits more than its rate.
    with start_in_thread(rate_rpm=600, rate_burst_sec=0.1) as openai_server:
        passed = 0
        started = time.monotonic()
        while time.monotonic() - started < 2.0:
            status, _, _ = raw_post(openai_server, "/v1/chat/completions", json.dumps({"messages": []}))
            passed += status == 200
            time.sleep(0.005)
        assert 15 <= passed <= 22
        assert openai_server.stats()["rate_limited"] > 100


def test_tpm_limit_counts_prompt_and_max_tokens(openai_server, client):
    # 60 TPM with a 60 s burst: 60 tokens; a request of 3 words + max_tokens 20 weighs 23.
    openai_server.control(rate_tpm=60, rate_burst_sec=60)
    messages = [{"role": "user", "content": "one two three"}]

    for _ in range(2):
        client.chat.completions.create(model="m", messages=messages, max_tokens=20)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="m", messages=messages, max_tokens=20)

    # 14 tokens left, 23 needed, 1 token per second: 9 s.
    assert refused.value.response.headers["Retry-After"] == "9"
    client.chat.completions.create(model="m", messages=messages, max_tokens=10)  # 13 tokens fit


def test_rate_limit_is_reset_and_validated(openai_server, client):
    openai_server.control(rate_rpm=1, rate_burst_sec=1)
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

    openai_server.reset()

    assert client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices
    with pytest.raises(ValueError, match="rate_rpm must be a number > 0"):
        openai_server.control(rate_rpm=0)
