"""Token streaming for the runnables of this package: the same call and the same result dict as
`.invoke()`, with `on_delta(text)` called as the answer arrives.

`stream(llm, prompt, deadline=..., on_delta=...)` is an extra entry point beside the seed's
`.invoke()/.ainvoke()` contract, which it does not change:

- `OpenAICompatibleLLM`: `/chat/completions` with `stream=True` and `stream_options.include_usage`, so
  the provider reports the usage in its last chunk. Timeouts, the job deadline, the retry budget, the error
  codes, the key scrubbing and the provider's shared rate limit (`limiter=`: a slot before each attempt, a
  429's Retry-After held for every process) are those of `invoke` (the same helpers decide). One rule is added: an attempt
  that fails after some text was streamed is not retried, since a retry would stream that text twice; the
  call ends with the attempt's error (the pipeline then answers degraded, as for any LLM failure).
  With `LLM_STREAM=false` it is called as `invoke` and its text is one delta: for a server that sends no
  usage in a stream (llama-cpp-python's server ignores `stream_options`), so the tokens are the server's.
- `StubLLM`: the stub's answer, streamed word by word.
- Any other runnable (tests' fakes): `invoke`, then its whole content as one delta.

`on_delta` may raise (e.g. `agent.errors.Cancelled` when the job was cancelled): the provider's response
is closed at once, which stops the generation and the paid tokens, and the exception propagates.

What was paid is never dropped: a stream that breaks, or is stopped by `on_delta`, after text arrived
was paid for that text. A broken one ends in an error result that carries the prompt's and the streamed
text's estimated tokens and their cost; the exception of a stopped one carries that result as its
`llm_result` (for a call that had ended before its text was delivered, the call's whole result). Budgets
(`agent.budget`) charge it and the job's row keeps it, as for a whole call.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from typing import Any

from agent.errors import Cancelled
from agent.llm_factory.openai_client import (
    OpenAICompatibleLLM,
    _Failure,
    _rate_limit_wait_failure,
    _Success,
    _success,
)
from agent.llm_factory.results import (
    Prompt,
    deadline_message,
    estimate_prompt_tokens,
    estimate_tokens,
    to_messages,
)
from agent.llm_factory.stub import StubLLM
from agent.llm_factory.transport import http_module

OnDelta = Callable[[str], None]

#: A word and the white space after it: the stub's unit of streaming (joined, they give the text back).
_WORD = re.compile(r"\s*\S+\s*|\s+")


def stream(llm: Any, prompt: Prompt, *, on_delta: OnDelta, deadline: float | None = None) -> dict[str, Any]:
    """Call `llm` like `llm.invoke(prompt, deadline=deadline)`, passing the answer text to `on_delta` as
    it is produced. Returns the same dict as `invoke` (the text of the deltas, joined, is its `content`
    when the call succeeded). Raises only what `on_delta` raises (and TypeError for a bad prompt).
    """
    own = getattr(type(llm), "stream", None)
    if own is not None:  # a wrapper (e.g. the job's) that adds its own bookkeeping
        return llm.stream(prompt, on_delta=on_delta, deadline=deadline)
    if isinstance(llm, OpenAICompatibleLLM) and llm._settings.stream:
        return _stream_openai(llm, prompt, on_delta=on_delta, deadline=deadline)
    if isinstance(llm, StubLLM):
        result = llm.invoke(prompt, deadline=deadline)
        if not result["error"]:
            _deliver(result, split_words(result["content"]), on_delta)
        return result
    return invoke_whole(llm, prompt, on_delta=on_delta, deadline=deadline)


def invoke_whole(
    llm: Any, prompt: Prompt, *, on_delta: OnDelta, deadline: float | None = None
) -> dict[str, Any]:
    """One plain call (`llm.invoke`); its answer text, if any, goes to `on_delta` in one piece. For an LLM
    that cannot stream, and for a caller that does not want it streamed."""
    result = llm.invoke(prompt, deadline=deadline)
    if not result.get("error") and result.get("content"):
        _deliver(result, [result["content"]], on_delta)
    return result


def _deliver(result: dict[str, Any], pieces: list[str], on_delta: OnDelta) -> None:
    """Pass the text of a call that has ended to `on_delta`; if it raises, the call was made all the same:
    the exception carries its whole `result` (`llm_result`)."""
    try:
        for piece in pieces:
            on_delta(piece)
    except BaseException as exc:
        _carry(exc, result)
        raise


def _carry(exc: BaseException, result: dict[str, Any]) -> None:
    """Attach the result of the call that `exc` interrupted as `exc.llm_result` (see the module's notes)."""
    with contextlib.suppress(AttributeError):  # an exception type with __slots__ cannot carry it
        exc.llm_result = result  # type: ignore[attr-defined]


def split_words(text: str) -> list[str]:
    """`text` cut into words with their surrounding white space; `"".join()` gives `text` back."""
    return _WORD.findall(text)


def _stream_openai(
    llm: OpenAICompatibleLLM, prompt: Prompt, *, on_delta: OnDelta, deadline: float | None
) -> dict[str, Any]:
    # The loop of OpenAICompatibleLLM.invoke, with a streamed attempt in place of `_complete`.
    started = time.monotonic()
    messages = to_messages(prompt)
    end = None if deadline is None else started + deadline
    attempts = 0
    while True:
        if not llm._rate_slot(messages, started, end):  # the provider's shared rate limit (`limiter=`)
            return llm._finish(started, attempts, _rate_limit_wait_failure())
        budget = llm._attempt_budget(end)
        if budget is None:
            return llm._finish(started, attempts, _Failure("timeout", deadline_message(attempts)))
        attempts += 1
        sent: list[str] = []
        try:
            outcome: _Success | _Failure = _stream_attempt(llm, messages, budget, on_delta, sent)
        except Cancelled as exc:
            if sent:  # stopped mid-answer: the text so far was paid
                stopped = _Failure(
                    "cancelled", "The call was stopped by a cancel.", usage=_usage(messages, sent)
                )
                _carry(exc, llm._finish(started, attempts, stopped))
            raise
        except Exception as exc:
            outcome = llm._classify(exc)
        llm._rate_pause(outcome)
        if isinstance(outcome, _Failure) and sent:
            # Text already reached the client: a retry would send it again. Stop with this error, and with
            # the cost of the text that was streamed (the provider charges it).
            message = f"{outcome.message} (after {len(sent)} streamed chunk(s))"
            return llm._finish(
                started, attempts, _Failure(outcome.code, message, usage=_usage(messages, sent))
            )
        wait = llm._retry_wait(outcome, attempts, end)
        if wait is None:
            return llm._finish(started, attempts, outcome)
        time.sleep(wait)


def _usage(messages: list[dict[str, str]], sent: list[str]) -> tuple[int, int]:
    """Estimated (prompt, completion) tokens of a stream that ended after `sent` text without its usage."""
    return estimate_prompt_tokens(messages), estimate_tokens("".join(sent))


def _stream_attempt(
    llm: OpenAICompatibleLLM,
    messages: list[dict[str, str]],
    budget: float,
    on_delta: OnDelta,
    sent: list[str],
) -> _Success | _Failure:
    """One streamed POST /chat/completions; appends each delivered piece of text to `sent`."""
    kwargs = llm._request_kwargs(messages, budget)
    kwargs["stream"] = True
    kwargs["stream_options"] = {"include_usage": True}
    # The SDK's own client: its sync transport bounds the whole response by the read timeout
    # (transport.py's DeadlineTransport checks the clock between chunks), so a slow stream ends in time.
    response = llm._post_chat(llm._sync_client(), kwargs)
    usage = None
    http = http_module()
    try:
        for chunk in response:
            usage = chunk_part(chunk, "usage") or usage
            for choice in chunk_part(chunk, "choices") or []:
                text = chunk_part(chunk_part(choice, "delta"), "content")
                if isinstance(text, str) and text:
                    sent.append(text)
                    on_delta(text)
    except http.TimeoutException:
        return _Failure("timeout", "The LLM call timed out while streaming.", retryable=True)
    except http.TransportError as exc:  # the SDK wraps errors of the request, not of the body's reads
        return _Failure(
            "connection_error", f"The provider's stream broke off ({type(exc).__name__}).", retryable=True
        )
    finally:
        close = getattr(response, "close", None)
        if close is not None:
            close()  # stops the generation (and its cost) when on_delta raised or the loop broke
    content = "".join(sent)
    if not content.strip():
        return _Failure("bad_response", "The provider's response has no message content.")
    prompt_tokens = chunk_part(usage, "prompt_tokens")
    completion_tokens = chunk_part(usage, "completion_tokens")
    return _success(content, prompt_tokens, completion_tokens, messages)


def chunk_part(value: Any, name: str) -> Any:
    """`value[name]` of a raw chunk or part of one (a dict), `value.name` of a typed one; None if absent."""
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)
