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

Modules: `factory` (build_llm_runnable), `stub` (StubLLM), `openai_client` (OpenAICompatibleLLM),
`retries` (the wait before the next attempt), `transport` (deadline-bounded HTTP, the client cache),
`results` (the result dict, tokens, cost), `scrub` (secrets out of messages), `streaming` (`stream_llm`:
the same call with the answer passed to `on_delta` as it arrives). `from agent.llm_factory
import build_llm_runnable, StubLLM, OpenAICompatibleLLM` is the seed's import path and stays.
"""

from agent.llm_factory.factory import LLMRunnable, build_llm_runnable
from agent.llm_factory.openai_client import DEFAULT_OPENAI_BASE_URL, OPENAI_REQUIREMENT, OpenAICompatibleLLM
from agent.llm_factory.results import (
    RESULT_KEYS,
    Prompt,
    compute_cost,
    estimate_prompt_tokens,
    estimate_tokens,
    to_messages,
)
from agent.llm_factory.scrub import scrub_secrets
from agent.llm_factory.streaming import invoke_whole
from agent.llm_factory.streaming import stream as stream_llm
from agent.llm_factory.stub import StubLLM, stub_answer
from agent.llm_factory.transport import CLIENT_CACHE_SIZE, POOL_SHARD_SIZE

__all__ = [
    "CLIENT_CACHE_SIZE",
    "DEFAULT_OPENAI_BASE_URL",
    "OPENAI_REQUIREMENT",
    "POOL_SHARD_SIZE",
    "RESULT_KEYS",
    "LLMRunnable",
    "OpenAICompatibleLLM",
    "Prompt",
    "StubLLM",
    "build_llm_runnable",
    "compute_cost",
    "estimate_prompt_tokens",
    "estimate_tokens",
    "scrub_secrets",
    "stream_llm",
    "invoke_whole",
    "stub_answer",
    "to_messages",
]
