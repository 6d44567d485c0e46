"""`build_llm_runnable()`: the one place that creates LLM clients.

The cost policy (`agent.cost_policy`) decides between the stub and the OpenAI-compatible client; the rest
of the backend never instantiates a client itself.
"""

from __future__ import annotations

from typing import Any, Protocol

from agent.config import PROVIDER_STUB, LLMSettings
from agent.cost_policy import CostDecision, resolve_cost_decision, select_api_key
from agent.errors import ImproperlyConfigured
from agent.llm_factory.openai_client import OpenAICompatibleLLM
from agent.llm_factory.results import Prompt
from agent.llm_factory.stub import StubLLM


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
        settings=settings, decision=decision, api_key=api_key, client_cache=client_cache
    )
