"""The one place that creates LLM clients: `build_llm_runnable()` returns a `StubLLM` or an
`OpenAICompatibleLLM`; the rest of the backend never instantiates a client itself.

Every runnable has `.decision` (the `CostDecision` to record on the job), `.invoke(prompt, deadline=...)`
and `await .ainvoke(prompt, deadline=...)`. Both return the same dict and never raise for upstream
failures (see `RESULT_KEYS` and docs/llm.md):

    content, provider, model, latency_ms, prompt_tokens, completion_tokens, usage_estimated,
    cost_usd, cost_unknown, attempts, retry_after_sec, error  (None or {"code", "message"})

Retries are counted once, here: the SDK's own retry is switched off (`max_retries=0` on the client)
because it ignores the job's deadline and honours `Retry-After` up to two minutes; this module retries
timeouts, connection errors, 429 and 5xx at most `LLM_MAX_RETRIES` times, within the deadline.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import itertools
import logging
import math
import os
import random
import re
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import ModuleType
from typing import Any, Protocol

from agent.config import PROVIDER_OPENAI_COMPATIBLE, PROVIDER_STUB, CostMode, LLMSettings, PriceTable
from agent.cost_policy import (
    STUB_MODEL,
    CostDecision,
    resolve_cost_decision,
    select_api_key,
)
from agent.errors import ImproperlyConfigured
from agent.language import detect_language
from agent.prompts import GroundedPrompt, parse_grounded_prompt
from agent.rate_limit import RateLimiter, bucket_id

logger = logging.getLogger(__name__)

Prompt = str | Sequence[Mapping[str, Any]]

OPENAI_REQUIREMENT = "openai>=1.30.0"
#: Used when LLM_BASE_URL is empty; passed explicitly so OPENAI_BASE_URL in the environment is ignored.
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
#: Connecting is quick or broken; waiting the whole budget for a SYN only delays the retry.
CONNECT_TIMEOUT_SEC = 5.0
#: Backoff between retries when the provider gives no Retry-After: 0.25 s, 0.5 s, 1 s ... (with jitter).
BACKOFF_BASE_SEC = 0.25
BACKOFF_MAX_SEC = 4.0
#: A retry that would get less time than this is not worth an upstream call.
MIN_ATTEMPT_SEC = 0.05
#: Clients kept per process (per event loop for async); each user key and pool shard is one entry.
CLIENT_CACHE_SIZE = 256
#: Connections per HTTP pool shard (see `_ClientSet`); LLM_HTTP_POOL_SIZE is split into such shards.
POOL_SHARD_SIZE = 50

RESULT_KEYS = (
    "content",
    "provider",
    "model",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "usage_estimated",
    "cost_usd",
    "cost_unknown",
    "attempts",
    "retry_after_sec",
    "error",
)


class LLMRunnable(Protocol):
    """What `build_llm_runnable` returns."""

    decision: CostDecision

    def invoke(self, prompt: Prompt, *, deadline: float | None = None) -> dict[str, Any]: ...

    async def ainvoke(self, prompt: Prompt, *, deadline: float | None = None) -> dict[str, Any]: ...


def build_llm_runnable(
    byo_api_key: str | None = None,
    *,
    settings: LLMSettings | None = None,
    decision: CostDecision | None = None,
    client_cache: bool = True,
    limiter: RateLimiter | None = None,
) -> StubLLM | OpenAICompatibleLLM:
    """Return the runnable that the cost policy chooses for this request.

    `byo_api_key` is the user's key from the `X-LLM-API-Key` header; it is used for this runnable only and
    never stored or logged. `settings` defaults to `LLMSettings.from_env()`. Pass a recorded `decision` to
    rebuild the same runnable on a retry instead of resolving the policy again. With `client_cache=False`
    the runnable gets its own HTTP client (tests); otherwise clients are shared per base URL and key.

    Raises `ImproperlyConfigured`: `byo_key` mode without a user key, a recorded decision whose key is
    not available, or the `openai` package missing.
    """
    settings = settings if settings is not None else LLMSettings.from_env()
    decision = decision if decision is not None else resolve_cost_decision(byo_api_key, settings)
    if decision.provider == PROVIDER_STUB:
        return StubLLM(model=decision.model, decision=decision)
    api_key = select_api_key(decision, byo_api_key, settings)
    if not api_key:
        raise ImproperlyConfigured(f"The recorded LLM decision needs the {decision.key_source} API key.")
    return OpenAICompatibleLLM(
        settings=settings, decision=decision, api_key=api_key, client_cache=client_cache, limiter=limiter
    )


# --- results, tokens and cost -------------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """Offline token estimate: about four characters per token (no tokenizer download)."""
    return math.ceil(len(text) / 4) if text else 0


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Estimate for a chat prompt: content tokens plus ~4 per message and 3 to prime the reply."""
    return sum(4 + estimate_tokens(str(m.get("content") or "")) for m in messages) + 3


def compute_cost(
    model: str, prompt_tokens: int, completion_tokens: int, prices: PriceTable
) -> tuple[float, bool]:
    """Return (cost_usd, cost_unknown). An unpriced model costs 0 with cost_unknown=True."""
    price = prices.get(model)
    if price is None:
        return 0.0, True
    cost = (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000
    return round(cost, 10), False


def to_messages(prompt: Prompt) -> list[dict[str, str]]:
    """Normalise a prompt to chat messages. Raises TypeError for anything else (a caller bug)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Sequence) and all(isinstance(m, Mapping) and "content" in m for m in prompt):
        return [{"role": str(m.get("role") or "user"), "content": str(m["content"] or "")} for m in prompt]
    raise TypeError("prompt must be a string or a list of chat messages with 'role' and 'content'")


def _result(
    *,
    provider: str,
    model: str,
    started: float,
    content: str = "",
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    usage_estimated: bool = False,
    prices: PriceTable | None,
    attempts: int = 0,
    retry_after_sec: float | None = None,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Build the result dict and log its one line. `prices=None` means free (the stub)."""
    if prices is None:
        cost, cost_unknown = 0.0, False
    else:
        cost, cost_unknown = compute_cost(model, prompt_tokens, completion_tokens, prices)
    result = {
        "content": content,
        "provider": provider,
        "model": model,
        "latency_ms": round((time.monotonic() - started) * 1000, 1),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "usage_estimated": usage_estimated,
        "cost_usd": cost,
        "cost_unknown": cost_unknown,
        "attempts": attempts,
        "retry_after_sec": retry_after_sec,
        "error": error,
    }
    # One line per call; by construction it holds no key and no header.
    logger.log(
        logging.WARNING if error else logging.INFO,
        "llm call provider=%s model=%s latency_ms=%.1f attempts=%d prompt_tokens=%d completion_tokens=%d "
        "usage_estimated=%s cost_usd=%.6f error=%s",
        provider,
        model,
        result["latency_ms"],
        attempts,
        prompt_tokens,
        completion_tokens,
        usage_estimated,
        cost,
        error["code"] if error else None,
    )
    return result


def _rate_limit_wait_failure() -> _Failure:
    return _Failure(
        "rate_limited",
        "No slot under the provider's rate limit (LLM_RATE_RPM / LLM_RATE_TPM) before the job's deadline.",
    )


def _deadline_message(attempts: int) -> str:
    if attempts == 0:
        return "The job deadline had passed before the LLM call."
    return f"The job deadline was reached after {attempts} LLM attempt(s)."


# --- the stub -----------------------------------------------------------------------------------------


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
            return _result(
                provider=self.provider,
                model=self.model,
                started=started,
                prices=None,
                error={"code": "timeout", "message": _deadline_message(0)},
            )
        content = stub_answer(messages)
        return _result(
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


# --- the OpenAI-compatible client ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Failure:
    code: str
    message: str
    retryable: bool = False
    retry_after: float | None = None


@dataclass(frozen=True)
class _Success:
    content: str
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool


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
                return self._finish(started, attempts, _Failure("timeout", _deadline_message(attempts)))
            attempts += 1
            try:
                completion = self._complete(self._sync_client(), messages, budget)
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
                return self._finish(started, attempts, _Failure("timeout", _deadline_message(attempts)))
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

    def _complete(self, client: Any, messages: list[dict[str, str]], budget: float) -> Any:
        """One POST /chat/completions.

        On the SDK's own client this goes through `client.post` with the body built here: the typed
        `chat.completions.create()` validates and transforms every argument again first, which measured
        0.4-0.5 ms of CPU per call (a third of the call, and a worker makes hundreds per second). Same
        client, auth, timeouts, error classes and `ChatCompletion` result. Any other client (tests inject
        fakes) gets `chat.completions.create`.
        """
        kwargs = self._request_kwargs(messages, budget)
        if not isinstance(client, _sdk_classes()[0]):
            return client.chat.completions.create(**kwargs)
        timeout = kwargs.pop("timeout")
        return client.post(
            "/chat/completions",
            body=kwargs,
            cast_to=_sdk_classes()[1],
            options={"timeout": timeout, "security": {"bearer_auth": True}},
        )

    def _request_kwargs(self, messages: list[dict[str, str]], budget: float) -> dict[str, Any]:
        http = _http_module()
        return {
            "model": self.model,
            "messages": messages,
            "max_tokens": self._settings.max_tokens,
            "timeout": http.Timeout(budget, connect=min(budget, CONNECT_TIMEOUT_SEC)),
        }

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
        estimated = not (_is_count(prompt_tokens) and _is_count(completion_tokens))
        if not _is_count(prompt_tokens):
            prompt_tokens = estimate_prompt_tokens(messages)
        if not _is_count(completion_tokens):
            completion_tokens = estimate_tokens(content)
        return _Success(content, prompt_tokens, completion_tokens, estimated)

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
            return _Failure("rate_limited", message, retryable=True, retry_after=_retry_after(exc.response))
        if status in (401, 403):
            return _Failure("auth_failed", message)
        retryable = status >= 500 or status == 408
        return _Failure(
            "provider_error", message, retryable=retryable, retry_after=_retry_after(exc.response)
        )

    def _retry_wait(self, outcome: _Success | _Failure, attempts: int, end: float | None) -> float | None:
        """Seconds to wait before the next attempt, or None to stop here."""
        if isinstance(outcome, _Success) or not outcome.retryable:
            return None
        if attempts > self._settings.max_retries:
            return None
        if outcome.retry_after is not None:
            if outcome.retry_after > self._settings.retry_after_cap_sec:
                return None  # waiting less than asked would only buy another 429
            wait = outcome.retry_after
        else:
            wait = min(BACKOFF_MAX_SEC, BACKOFF_BASE_SEC * 2 ** (attempts - 1)) * (0.5 + random.random() / 2)
            wait = min(wait, self._settings.retry_after_cap_sec)
        if end is not None and time.monotonic() + wait > end - MIN_ATTEMPT_SEC:
            return None
        return wait

    def _finish(self, started: float, attempts: int, outcome: _Success | _Failure) -> dict[str, Any]:
        common = {
            "provider": self.provider,
            "model": self.model,
            "started": started,
            "prices": self._settings.prices,
            "attempts": attempts,
        }
        if isinstance(outcome, _Success):
            return _result(
                **common,
                content=outcome.content,
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
                usage_estimated=outcome.usage_estimated,
            )
        error = {"code": outcome.code, "message": outcome.message}
        return _result(**common, retry_after_sec=outcome.retry_after, error=error)

    def _scrub(self, text: str) -> str:
        return scrub_secrets(text, self._api_key)

    # -- clients --

    def _sync_client(self) -> Any:
        if self._client is None:
            make = _CLIENTS.sync_client if self._client_cache else _new_sync_client
            self._client = make(self._openai, self._base_url, self._api_key, self._settings.http_pool_size)
        return self._client

    def _get_async_client(self) -> Any:
        if self._async_client is not None:
            return self._async_client
        if not self._client_cache:
            return _new_async_client(
                self._openai, self._base_url, self._api_key, self._settings.http_pool_size
            )
        return _CLIENTS.async_client(
            self._openai, self._base_url, self._api_key, self._settings.http_pool_size
        )


_SECRET_PATTERNS = (re.compile(r"(?i)bearer\s+\S+"), re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"))


def scrub_secrets(text: str, *secrets: str | None) -> str:
    """Remove `secrets` and anything that looks like a bearer token or an OpenAI key from `text`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("[REDACTED]", text)
    return text


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _retry_after(response: Any) -> float | None:
    """Seconds from `Retry-After` / `retry-after-ms` (number or HTTP date); None when absent or unreadable."""
    headers = getattr(response, "headers", None) or {}
    try:
        if headers.get("retry-after-ms") is not None:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


# --- client construction and the process-wide cache ---------------------------------------------------


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
    """(the SDK's sync client base class, `ChatCompletion`): what `OpenAICompatibleLLM._complete` posts with."""
    from openai._base_client import SyncAPIClient
    from openai.types.chat import ChatCompletion

    return SyncAPIClient, ChatCompletion


@functools.cache
def _http_module() -> ModuleType:
    """The HTTP library of the installed `openai`: httpx2 for openai>=3, httpx before."""
    try:
        return importlib.import_module("httpx2")
    except ImportError:
        return importlib.import_module("httpx")


@functools.cache
def _deadline_transport_class() -> type:
    """A transport that bounds each request's total time by its read timeout.

    httpx timeouts apply per read, so a server that drips one byte at a time never times out. The sync
    client has no task to cancel, so the response stream checks the clock between chunks instead.
    """
    http = _http_module()

    class DeadlineStream(http.SyncByteStream):
        def __init__(self, inner: Any, request: Any, end: float):
            self._inner, self._request, self._end = inner, request, end

        def __iter__(self):
            for chunk in self._inner:
                if time.monotonic() > self._end:
                    raise http.ReadTimeout(
                        "The response took longer than its timeout.", request=self._request
                    )
                yield chunk

        def close(self) -> None:
            self._inner.close()

    class DeadlineTransport(http.BaseTransport):
        def __init__(self, inner: Any):
            self._inner = inner

        def handle_request(self, request: Any) -> Any:
            started = time.monotonic()
            timeouts = request.extensions.get("timeout") or {}
            budget = timeouts.get("read")
            response = self._inner.handle_request(request)
            if budget is None:
                return response
            end = started + budget
            # Headers that came late leave less time for the body: httpcore reads the body's read
            # timeout from these extensions when the body is first read, i.e. after this point.
            request.extensions["timeout"] = {**timeouts, "read": max(end - time.monotonic(), 0.001)}
            return http.Response(
                status_code=response.status_code,
                headers=response.headers,
                stream=DeadlineStream(response.stream, request, end),
                extensions=response.extensions,
            )

        def close(self) -> None:
            self._inner.close()

    return DeadlineTransport


def _limits(pool_size: int) -> Any:
    return _http_module().Limits(max_connections=pool_size, max_keepalive_connections=pool_size)


def _new_sync_http(pool_size: int) -> Any:
    http = _http_module()
    transport = _deadline_transport_class()(http.HTTPTransport(limits=_limits(pool_size)))
    return http.Client(transport=transport)


def _new_async_http(pool_size: int) -> Any:
    return _http_module().AsyncClient(limits=_limits(pool_size))


def _new_sync_client(
    openai: ModuleType, base_url: str, api_key: str, pool_size: int, http: Any = None
) -> Any:
    # max_retries=0: retries are done (and budgeted) by OpenAICompatibleLLM, not stacked on the SDK's.
    return openai.OpenAI(
        base_url=base_url, api_key=api_key, max_retries=0, http_client=http or _new_sync_http(pool_size)
    )


def _new_async_client(
    openai: ModuleType, base_url: str, api_key: str, pool_size: int, http: Any = None
) -> Any:
    return openai.AsyncOpenAI(
        base_url=base_url, api_key=api_key, max_retries=0, http_client=http or _new_async_http(pool_size)
    )


class _ClientSet:
    """The clients of the process (sync) or of one event loop (async).

    One set of HTTP connection pools per base URL, shared by every key, and one light `openai` client per
    (base URL, key hash, shard). httpcore scans its whole pool for each request, which grows
    quadratically under load, so a pool of N connections is split into shards of at most
    `POOL_SHARD_SIZE`; successive callers take the shards in turn.
    """

    def __init__(self, new_http: Any, new_client: Any, maxsize: int):
        self._new_http, self._new_client, self._maxsize = new_http, new_client, maxsize
        self._http: dict[tuple[str, int, int], Any] = {}
        self._clients: OrderedDict[tuple[str, str, int], Any] = OrderedDict()
        self._turn = itertools.count()

    def get(self, openai: ModuleType, base_url: str, api_key: str, pool_size: int) -> Any:
        shards = math.ceil(pool_size / POOL_SHARD_SIZE)
        shard = next(self._turn) % shards
        key = (base_url, _key_hash(api_key), shard)
        client = self._clients.get(key)
        if client is None:
            http = self._http.get((base_url, pool_size, shard))
            if http is None:
                http = self._http[(base_url, pool_size, shard)] = self._new_http(
                    math.ceil(pool_size / shards)
                )
            client = self._clients[key] = self._new_client(openai, base_url, api_key, pool_size, http)
            while len(self._clients) > self._maxsize:
                # Dropped, not closed: another thread may be using it; the shared pool stays open anyway.
                self._clients.popitem(last=False)
        self._clients.move_to_end(key)
        return client


class _ClientCache:
    """Process-wide clients so thousands of jobs share connections instead of opening one each.

    Keys are cached by their sha256 only. Async clients are bound to an event loop, so each loop gets its
    own set; the sets of closed loops are dropped on the next lookup.
    """

    def __init__(self, maxsize: int = CLIENT_CACHE_SIZE):
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self._sync = _ClientSet(_new_sync_http, _new_sync_client, self._maxsize)
        # id(loop) -> (loop, clients). Not a WeakKeyDictionary: the clients refer to their loop, so its
        # entries would never die.
        self._per_loop: dict[int, tuple[Any, _ClientSet]] = {}

    def sync_client(self, openai: ModuleType, base_url: str, api_key: str, pool_size: int) -> Any:
        with self._lock:
            return self._sync.get(openai, base_url, api_key, pool_size)

    def async_client(self, openai: ModuleType, base_url: str, api_key: str, pool_size: int) -> Any:
        loop = asyncio.get_running_loop()
        with self._lock:
            for loop_id in [i for i, (other, _) in self._per_loop.items() if other.is_closed()]:
                del self._per_loop[loop_id]
            entry = self._per_loop.get(id(loop))
            if entry is None:
                entry = self._per_loop[id(loop)] = (
                    loop,
                    _ClientSet(_new_async_http, _new_async_client, self._maxsize),
                )
            return entry[1].get(openai, base_url, api_key, pool_size)


def _key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


_CLIENTS = _ClientCache()

# A forked worker (Celery prefork) must not share its parent's sockets: start with an empty cache.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_CLIENTS.reset)
