"""`OpenAICompatibleLLM`: `/chat/completions` of an OpenAI-compatible server through the `openai` SDK.

Retries are counted once, here: the SDK's own retry is switched off (`max_retries=0` on the client,
see `transport.py`) because it ignores the job's deadline; `retries.retry_wait` decides each next attempt.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import time
import traceback
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from agent.config import PROVIDER_OPENAI_COMPATIBLE, LLMSettings
from agent.cost_policy import CostDecision
from agent.errors import ImproperlyConfigured
from agent.llm_factory import transport
from agent.llm_factory.results import (
    Prompt,
    deadline_message,
    estimate_prompt_tokens,
    estimate_tokens,
    result,
    to_messages,
)
from agent.llm_factory.retries import MIN_ATTEMPT_SEC, retry_wait
from agent.llm_factory.scrub import scrub_secrets
from agent.rate_limit import RateLimiter, bucket_id
from core.retry_after import retry_after_seconds

logger = logging.getLogger("agent.llm_factory")

OPENAI_REQUIREMENT = "openai>=1.30.0"
#: Used when LLM_BASE_URL is empty; passed explicitly so OPENAI_BASE_URL in the environment is ignored.
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
#: Connecting is quick or broken; waiting the whole budget for a SYN only delays the retry.
CONNECT_TIMEOUT_SEC = 5.0


@dataclass(frozen=True)
class _Failure:
    code: str
    message: str
    retryable: bool = False
    retry_after: float | None = None
    #: (prompt, completion) tokens, estimated, of a call that failed after it produced text: it was paid.
    usage: tuple[int, int] | None = None


@dataclass(frozen=True)
class _Success:
    content: str
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool


def _rate_limit_wait_failure() -> _Failure:
    return _Failure(
        "rate_limited",
        "No slot under the provider's rate limit (LLM_RATE_RPM / LLM_RATE_TPM) before the job's deadline.",
    )


class OpenAICompatibleLLM:
    """Calls `/chat/completions` of an OpenAI-compatible server through the official `openai` client.

    Build it with `build_llm_runnable`. `client` / `async_client` let tests inject fakes; otherwise
    clients come from the process-wide cache (one connection pool per base URL, one client per key).
    """

    provider = PROVIDER_OPENAI_COMPATIBLE

    def __init__(
        self,
        *,
        settings: LLMSettings,
        decision: CostDecision,
        api_key: str,
        client: Any = None,
        async_client: Any = None,
        client_cache: bool = True,
        limiter: RateLimiter | None = None,
    ):
        self._openai = _import_openai()
        self.decision = decision
        self.model = decision.model
        self._settings = settings
        self._api_key = api_key
        self._base_url = settings.base_url or DEFAULT_OPENAI_BASE_URL
        self._client = client
        self._async_client = async_client
        self._client_cache = client_cache
        self._limiter = limiter
        self._bucket = bucket_id(self._base_url, api_key) if limiter is not None else ""

    def __repr__(self) -> str:
        # Never the key: runnables show up in tracebacks and debug logs.
        return (
            f"OpenAICompatibleLLM(base_url={self._base_url!r}, model={self.model!r}, "
            f"key_source={self.decision.key_source!r})"
        )

    def invoke(self, prompt: Prompt, *, deadline: float | None = None) -> dict[str, Any]:
        """Call the model; `deadline` is the seconds left for the whole job (None: no job deadline).

        Each attempt may last min(LLM_TIMEOUT_SEC, time left). Returns the result dict; never raises for
        upstream failures (TypeError only for a prompt of the wrong type).
        """
        started = time.monotonic()
        messages = to_messages(prompt)
        end = None if deadline is None else started + deadline
        attempts = 0
        while True:
            if not self._rate_slot(messages, started, end):
                return self._finish(started, attempts, _rate_limit_wait_failure())
            budget = self._attempt_budget(end)
            if budget is None:
                return self._finish(started, attempts, _Failure("timeout", deadline_message(attempts)))
            attempts += 1
            try:
                completion = self._post_chat(self._sync_client(), self._request_kwargs(messages, budget))
                outcome: _Success | _Failure = self._parse(completion, messages)
            except Exception as exc:
                outcome = self._classify(exc)
            self._rate_pause(outcome)
            wait = self._retry_wait(outcome, attempts, end)
            if wait is None:
                return self._finish(started, attempts, outcome)
            time.sleep(wait)

    async def ainvoke(self, prompt: Prompt, *, deadline: float | None = None) -> dict[str, Any]:
        """The async twin of `invoke`, with the same contract."""
        started = time.monotonic()
        messages = to_messages(prompt)
        end = None if deadline is None else started + deadline
        attempts = 0
        while True:
            if self._limiter is not None and not await asyncio.to_thread(
                self._rate_slot, messages, started, end
            ):
                return self._finish(started, attempts, _rate_limit_wait_failure())
            budget = self._attempt_budget(end)
            if budget is None:
                return self._finish(started, attempts, _Failure("timeout", deadline_message(attempts)))
            attempts += 1
            client = self._get_async_client()
            try:
                # httpx timeouts are per read; asyncio.timeout bounds the whole attempt (slow drip).
                async with asyncio.timeout(budget):
                    completion = await client.chat.completions.create(
                        **self._request_kwargs(messages, budget)
                    )
                outcome: _Success | _Failure = self._parse(completion, messages)
            except Exception as exc:
                outcome = self._classify(exc)
            finally:
                if client is not self._async_client and not self._client_cache:
                    await client.close()
            self._rate_pause(outcome)
            wait = self._retry_wait(outcome, attempts, end)
            if wait is None:
                return self._finish(started, attempts, outcome)
            await asyncio.sleep(wait)

    def close(self) -> None:
        """Close a client this runnable owns (only with client_cache=False); cached clients stay open."""
        if not self._client_cache and self._client is not None:
            self._client.close()

    # -- the provider's rate limit --

    def _rate_slot(self, messages: list[dict[str, str]], started: float, end: float | None) -> bool:
        """Wait for this attempt's slot under the shared rate limit; False when the deadline comes first.

        The request weighs what the provider counts against TPM: the prompt plus `max_tokens`. Without a
        job deadline the wait is bounded by one attempt's timeout.
        """
        if self._limiter is None:
            return True
        weight = estimate_prompt_tokens(messages) + self._settings.max_tokens
        limit = end if end is not None else started + self._settings.timeout_sec
        return self._limiter.acquire(self._bucket, tokens=weight, end=limit - MIN_ATTEMPT_SEC)

    def _rate_pause(self, outcome: _Success | _Failure) -> None:
        """A 429 with Retry-After holds every process calling with this base URL and key."""
        if (
            self._limiter is not None
            and isinstance(outcome, _Failure)
            and outcome.code == "rate_limited"
            and outcome.retry_after
        ):
            self._limiter.pause(self._bucket, outcome.retry_after)

    # -- one attempt --

    def _attempt_budget(self, end: float | None) -> float | None:
        if end is None:
            return self._settings.timeout_sec
        left = end - time.monotonic()
        if left <= 0:
            return None
        return min(self._settings.timeout_sec, left)

    def _post_chat(self, client: Any, kwargs: dict[str, Any]) -> Any:
        """One POST /chat/completions (`kwargs` from `_request_kwargs`): a `ChatCompletion`, or with
        `stream` set in `kwargs` its chunks.

        On the SDK's own client this goes through `client.post` with the body built here. The typed
        `chat.completions.create()` validates and transforms every argument again first, which measured
        0.4-0.5 ms of CPU per call (a third of a plain call, and a worker makes hundreds per second), and
        builds a typed `ChatCompletionChunk` for each chunk of a stream: 55% of the CPU of a streamed call
        (cProfile); `python -m bench --only streaming`: 1.5-2.5 ms of CPU for an answer of 38 chunks against
        6.5-7.7 ms typed, 3 runs. So a stream's chunks are the provider's JSON objects as they come (dicts,
        `Stream[object]`). Same client, auth, timeouts, SSE decoding and error classes (an `error` in a
        stream raises `APIError`). Any other client (tests inject fakes) gets `chat.completions.create` and
        its results as it makes them; `streaming.chunk_part` reads both kinds of chunk.
        """
        sdk_client, completion = _sdk_classes()
        if not isinstance(client, sdk_client):
            return client.chat.completions.create(**kwargs)
        from openai import Stream

        timeout = kwargs.pop("timeout")
        stream = bool(kwargs.get("stream"))
        return client.post(
            "/chat/completions",
            body=kwargs,
            cast_to=object if stream else completion,
            stream=stream,
            stream_cls=Stream[object] if stream else None,
            options={"timeout": timeout, "security": {"bearer_auth": True}},
        )

    def _request_kwargs(self, messages: list[dict[str, str]], budget: float) -> dict[str, Any]:
        http = transport.http_module()
        kwargs = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self._settings.max_tokens,
            "timeout": http.Timeout(budget, connect=min(budget, CONNECT_TIMEOUT_SEC)),
        }
        if self._settings.temperature is not None:  # else the provider's default, as before the setting
            kwargs["temperature"] = self._settings.temperature
        return kwargs

    def _parse(self, completion: Any, messages: list[dict[str, str]]) -> _Success | _Failure:
        """Read content and usage defensively: compatible servers send all sorts of shapes."""
        if isinstance(completion, str):
            return _Failure("bad_response", "The provider answered with a body that is not JSON.")
        try:
            choices = getattr(completion, "choices", None)
            if not isinstance(choices, list) or not choices:
                return _Failure("bad_response", "The provider's response has no choices.")
            content = getattr(getattr(choices[0], "message", None), "content", None)
            if not isinstance(content, str) or not content.strip():
                return _Failure("bad_response", "The provider's response has no message content.")
            usage = getattr(completion, "usage", None)
            prompt_tokens = getattr(usage, "prompt_tokens", None)
            completion_tokens = getattr(usage, "completion_tokens", None)
        except Exception as exc:  # a construct()ed model with an unexpected shape
            return _Failure("bad_response", f"Unreadable provider response ({type(exc).__name__}).")
        return _success(content, prompt_tokens, completion_tokens, messages)

    def _classify(self, exc: BaseException) -> _Failure:
        """Map an exception to an error code. Messages are scrubbed of the key."""
        openai = self._openai
        if isinstance(exc, TimeoutError | openai.APITimeoutError):
            return _Failure("timeout", "The LLM call timed out.", retryable=True)
        if isinstance(exc, openai.APIConnectionError):
            return _Failure(
                "connection_error", f"Could not reach the LLM provider at {self._base_url}.", True
            )
        if isinstance(exc, openai.APIStatusError):
            return self._classify_status(exc)
        if isinstance(exc, openai.APIResponseValidationError | ValueError):
            return _Failure("bad_response", f"The provider's response is malformed ({type(exc).__name__}).")
        # Not an upstream failure we know: probably a bug. Keep the traceback, without the key.
        logger.error(
            "Unexpected LLM client error:\n%s", self._scrub("".join(traceback.format_exception(exc)))
        )
        return _Failure("provider_error", f"Unexpected LLM client error ({type(exc).__name__}).")

    def _classify_status(self, exc: Any) -> _Failure:
        status = exc.status_code
        detail = self._scrub(str(getattr(exc, "message", "") or exc))[:300]
        message = f"HTTP {status} from the LLM provider: {detail}"
        if status == 402 or (status == 429 and "insufficient_quota" in (exc.code, exc.type)):
            return _Failure("quota_exceeded", message)
        if status == 429:
            return _Failure(
                "rate_limited",
                message,
                retryable=True,
                retry_after=retry_after_seconds(getattr(exc.response, "headers", None)),
            )
        if status in (401, 403):
            return _Failure("auth_failed", message)
        retryable = status >= 500 or status == 408
        return _Failure(
            "provider_error",
            message,
            retryable=retryable,
            retry_after=retry_after_seconds(getattr(exc.response, "headers", None)),
        )

    def _retry_wait(self, outcome: _Success | _Failure, attempts: int, end: float | None) -> float | None:
        """Seconds to wait before the next attempt, or None to stop here."""
        if isinstance(outcome, _Success) or not outcome.retryable:
            return None
        return retry_wait(
            attempts=attempts,
            max_retries=self._settings.max_retries,
            retry_after=outcome.retry_after,
            cap_sec=self._settings.retry_after_cap_sec,
            end=end,
        )

    def _finish(self, started: float, attempts: int, outcome: _Success | _Failure) -> dict[str, Any]:
        common = {
            "provider": self.provider,
            "model": self.model,
            "started": started,
            "prices": self._settings.prices,
            "attempts": attempts,
        }
        if isinstance(outcome, _Success):
            return result(
                **common,
                content=outcome.content,
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
                usage_estimated=outcome.usage_estimated,
            )
        error = {"code": outcome.code, "message": outcome.message}
        if outcome.usage is not None:
            common.update(
                prompt_tokens=outcome.usage[0], completion_tokens=outcome.usage[1], usage_estimated=True
            )
        return result(**common, retry_after_sec=outcome.retry_after, error=error)

    def _scrub(self, text: str) -> str:
        return scrub_secrets(text, self._api_key)

    # -- clients --

    def _sync_client(self) -> Any:
        if self._client is None:
            make = transport.CLIENTS.sync_client if self._client_cache else transport.new_sync_client
            self._client = make(self._openai, self._base_url, self._api_key, self._settings.http_pool_size)
        return self._client

    def _get_async_client(self) -> Any:
        if self._async_client is not None:
            return self._async_client
        if not self._client_cache:
            return transport.new_async_client(
                self._openai, self._base_url, self._api_key, self._settings.http_pool_size
            )
        return transport.CLIENTS.async_client(
            self._openai, self._base_url, self._api_key, self._settings.http_pool_size
        )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _success(
    content: str, prompt_tokens: Any, completion_tokens: Any, messages: list[dict[str, str]]
) -> _Success:
    """An answer with the token counts the provider reported (streamed or not); a count it did not report
    (or not as a count) is estimated, and the usage flagged as estimated."""
    estimated = not (_is_count(prompt_tokens) and _is_count(completion_tokens))
    if not _is_count(prompt_tokens):
        prompt_tokens = estimate_prompt_tokens(messages)
    if not _is_count(completion_tokens):
        completion_tokens = estimate_tokens(content)
    return _Success(content, prompt_tokens, completion_tokens, estimated)


def _import_openai() -> ModuleType:
    try:
        return importlib.import_module("openai")
    except ImportError:
        raise ImproperlyConfigured(
            f"LLM_PROVIDER=openai_compatible needs the 'openai' package (Falta la dependencia 'openai'): "
            f"install {OPENAI_REQUIREMENT}."
        ) from None


@functools.cache
def _sdk_classes() -> tuple[type, type]:
    """(the SDK's sync client base class, `ChatCompletion`): what `OpenAICompatibleLLM._post_chat` posts with."""
    from openai._base_client import SyncAPIClient
    from openai.types.chat import ChatCompletion

    return SyncAPIClient, ChatCompletion
