"""The runnables' result dict, token estimates and cost: what every LLM call returns.

Every runnable's `invoke` / `ainvoke` returns a dict with exactly `RESULT_KEYS` (docs/llm.md) and never
raises for upstream failures; `result()` builds it and logs the call's one line (never a key).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from agent.config import PriceTable

logger = logging.getLogger("agent.llm_factory")

Prompt = str | Sequence[Mapping[str, Any]]

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


def result(
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
    # A model may write NUL characters; no database stores them in text (PostgreSQL refuses the whole
    # row: the job's finish failed and every retry was another paid call).
    content = content.replace("\x00", "")
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


def deadline_message(attempts: int) -> str:
    if attempts == 0:
        return "The job deadline had passed before the LLM call."
    return f"The job deadline was reached after {attempts} LLM attempt(s)."
