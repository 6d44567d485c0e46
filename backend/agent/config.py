"""LLM settings parsed once from the environment (policy is data).

`LLMSettings.from_env()` reads every `LLM_*` variable, applies the seed's defaults and fails loudly with
`ImproperlyConfigured` naming the variable and the allowed values when one is wrong, so a bad deployment
stops at start-up instead of at the first job. See docs/llm.md for the full table.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from core.env import Env, check_int, check_number, env_error

#: The request header that carries a user's own API key (cost modes `byo_key` and `hybrid`).
BYO_KEY_HEADER = "X-LLM-API-Key"

PROVIDER_STUB = "stub"
PROVIDER_OPENAI_COMPATIBLE = "openai_compatible"

# The seed accepts three spellings for "no network"; they all mean the stub.
_PROVIDER_ALIASES = {
    "stub": PROVIDER_STUB,
    "local_stub": PROVIDER_STUB,
    "test": PROVIDER_STUB,
    "openai_compatible": PROVIDER_OPENAI_COMPATIBLE,
}


class CostMode(StrEnum):
    """Who pays for LLM calls. See `agent.cost_policy.resolve_cost_decision` for the rules."""

    PAID = "paid"
    BYO_KEY = "byo_key"
    HYBRID = "hybrid"


#: The highest sampling temperature OpenAI-compatible APIs accept.
MAX_TEMPERATURE = 2.0

#: Prices per model: (input USD per million tokens, output USD per million tokens).
PriceTable = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class LLMSettings:
    """Everything the LLM factory needs, validated. Build it with `from_env()` in production.

    Constructing it directly (tests do) runs the same validation: an invalid value raises
    `ImproperlyConfigured` naming the environment variable it would come from.
    """

    provider: str = PROVIDER_OPENAI_COMPATIBLE
    model: str = "llama-3-8b-instruct"
    base_url: str | None = None
    # repr=False: settings end up in logs and tracebacks; the server key must not.
    api_key: str | None = field(default=None, repr=False)
    timeout_sec: float = 30.0
    max_tokens: int = 512
    max_retries: int = 1
    cost_mode: CostMode = CostMode.PAID
    allow_byo_key: bool = False
    retry_after_cap_sec: float = 10.0
    prices: PriceTable = field(default_factory=dict, hash=False)
    http_pool_size: int = 100
    #: The provider's rate limit per base URL and key (None: unlimited); see agent/rate_limit.py.
    rate_rpm: int | None = None
    rate_tpm: int | None = None
    #: Stream answers (`stream_options.include_usage`); False: one plain call, its text as a single delta,
    #: for servers that do not report usage in a stream (llama-cpp-python's: docs/llm.md).
    stream: bool = True
    #: Sampling temperature sent with every completion (0 to 2); None: the provider's default. 0 makes a
    #: model's answers repeatable, e.g. to compare models or settings over a re-run batch.
    temperature: float | None = None

    def __post_init__(self) -> None:
        provider = _PROVIDER_ALIASES.get(str(self.provider).strip().lower())
        if provider is None:
            raise env_error("LLM_PROVIDER", self.provider, "one of stub, local_stub, test, openai_compatible")
        object.__setattr__(self, "provider", provider)
        mode = self.cost_mode
        if not isinstance(mode, CostMode):
            mode = str(mode).strip().lower()
        try:
            object.__setattr__(self, "cost_mode", CostMode(mode))
        except ValueError:
            raise env_error("LLM_COST_MODE", self.cost_mode, "one of paid, byo_key, hybrid") from None
        if not str(self.model).strip():
            raise env_error("LLM_MODEL", self.model, "a non-empty model name")
        object.__setattr__(self, "base_url", self.base_url or None)
        object.__setattr__(self, "api_key", self.api_key or None)
        check_number("LLM_TIMEOUT_SEC", self.timeout_sec, minimum=0.0, inclusive=False)
        check_number("LLM_RETRY_AFTER_CAP_SEC", self.retry_after_cap_sec, minimum=0.0, inclusive=True)
        check_int("LLM_MAX_TOKENS", self.max_tokens, minimum=1)
        check_int("LLM_MAX_RETRIES", self.max_retries, minimum=0)
        check_int("LLM_HTTP_POOL_SIZE", self.http_pool_size, minimum=1)
        if self.temperature is not None:
            check_number(
                "LLM_TEMPERATURE", self.temperature, minimum=0.0, inclusive=True, maximum=MAX_TEMPERATURE
            )
        for name, value in (("LLM_RATE_RPM", self.rate_rpm), ("LLM_RATE_TPM", self.rate_tpm)):
            if value is not None:
                check_int(name, value, minimum=1)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> LLMSettings:
        """Read the `LLM_*` variables (empty means "use the default").

        Raises `ImproperlyConfigured` naming the variable for an unknown provider or cost mode, a value
        that is not a number, a bad boolean or a bad `LLM_PRICES` spec.
        """

        env = Env(environ)
        return cls(
            provider=env.str("LLM_PROVIDER", PROVIDER_OPENAI_COMPATIBLE),
            model=env.str("LLM_MODEL", "llama-3-8b-instruct"),
            base_url=env.str("LLM_BASE_URL") or None,
            api_key=env.str("LLM_API_KEY") or None,
            timeout_sec=env.float("LLM_TIMEOUT_SEC", 30.0),
            max_tokens=env.int("LLM_MAX_TOKENS", 512),
            max_retries=env.int("LLM_MAX_RETRIES", 1),
            cost_mode=env.str("LLM_COST_MODE", CostMode.PAID.value),  # type: ignore[arg-type]
            allow_byo_key=env.bool("LLM_ALLOW_BYO_KEY", False),
            retry_after_cap_sec=env.float("LLM_RETRY_AFTER_CAP_SEC", 10.0),
            prices=parse_prices(env.str("LLM_PRICES")),
            http_pool_size=env.int("LLM_HTTP_POOL_SIZE", 100),
            rate_rpm=env.optional_int("LLM_RATE_RPM"),
            rate_tpm=env.optional_int("LLM_RATE_TPM"),
            stream=env.bool("LLM_STREAM", True),
            temperature=env.optional_float("LLM_TEMPERATURE"),
        )

    def price_of(self, model: str) -> tuple[float, float] | None:
        """The (input, output) USD per million tokens of `model`, or None when it has no price."""
        return self.prices.get(model)


def parse_prices(spec: str) -> PriceTable:
    """Parse `LLM_PRICES`: comma-separated `model=input/output`, USD per million tokens.

    Example: ``gpt-4o-mini=0.15/0.60,llama-3-8b-instruct=0/0``. The model name is everything before the
    last ``=`` so names such as ``meta-llama/Llama-3-8B`` work. Raises `ImproperlyConfigured`.
    """
    expected = "comma-separated model=input/output USD per million tokens, e.g. gpt-4o-mini=0.15/0.60"
    prices: PriceTable = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        model, sep, pair = item.rpartition("=")
        model = model.strip()
        parts = pair.split("/")
        if not sep or not model or len(parts) != 2 or model in prices:
            raise env_error("LLM_PRICES", spec, expected)
        try:
            price_in, price_out = (float(part) for part in parts)
        except ValueError:
            raise env_error("LLM_PRICES", spec, expected) from None
        if not all(math.isfinite(p) and p >= 0 for p in (price_in, price_out)):
            raise env_error("LLM_PRICES", spec, expected)
        prices[model] = (price_in, price_out)
    return prices
