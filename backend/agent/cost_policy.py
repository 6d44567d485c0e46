"""Cost-mode policy: who pays for a job's LLM calls, resolved once and recorded on the job.

| LLM_COST_MODE | user key sent (header)                       | no user key                          |
|---------------|----------------------------------------------|--------------------------------------|
| paid          | ignored: server key; none -> stub + warning  | server key; none -> stub + warning   |
| byo_key       | user key                                     | ImproperlyConfigured (header needed) |
| hybrid        | user key if LLM_ALLOW_BYO_KEY=true, else     | server key; none -> stub + warning   |
|               | as if no user key was sent                   |                                      |

With `LLM_PROVIDER=stub` the provider is always the stub and no key is used, but `byo_key` still requires
the header, so the API behaves the same in development as in production.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Literal

from agent.config import BYO_KEY_HEADER, PROVIDER_OPENAI_COMPATIBLE, PROVIDER_STUB, CostMode, LLMSettings
from agent.errors import ImproperlyConfigured

logger = logging.getLogger(__name__)

KeySource = Literal["user", "server", "none"]

#: The model name the stub reports; also what a decision that fell back to the stub records.
STUB_MODEL = "stub"


@dataclass(frozen=True)
class CostDecision:
    """Which provider, model and key source a job uses. Never holds a key: safe to store and log."""

    mode: str
    key_source: KeySource
    provider: str
    model: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def resolve_cost_decision(byo_api_key: str | None, settings: LLMSettings) -> CostDecision:
    """Apply the cost-mode rules (table above) to one request.

    `byo_api_key` is the value of the `X-LLM-API-Key` header (blank counts as missing). Logs one warning
    when it falls back to the stub because no key is available. Raises `ImproperlyConfigured` in
    `byo_key` mode without a user key; its message names the header so the API can show it as a 400.
    """
    user_key = _clean(byo_api_key)
    mode = settings.cost_mode

    if mode is CostMode.BYO_KEY and user_key is None:
        raise ImproperlyConfigured(
            f"LLM_COST_MODE=byo_key: the user's API key is required in the {BYO_KEY_HEADER} header."
        )

    if mode is CostMode.BYO_KEY:
        source: KeySource = "user"
    elif mode is CostMode.HYBRID and user_key is not None and settings.allow_byo_key:
        source = "user"
    elif settings.api_key:
        source = "server"
    else:
        source = "none"

    if settings.provider == PROVIDER_STUB:
        return CostDecision(mode=mode.value, key_source="none", provider=PROVIDER_STUB, model=STUB_MODEL)
    if source == "none":
        # Degrade instead of crashing (seed rule); one warning per decision makes the misconfiguration
        # visible without failing the job.
        logger.warning(
            "LLM_COST_MODE=%s and no API key is available (LLM_API_KEY is empty): using the stub LLM.",
            mode.value,
        )
        return CostDecision(mode=mode.value, key_source="none", provider=PROVIDER_STUB, model=STUB_MODEL)
    return CostDecision(
        mode=mode.value, key_source=source, provider=PROVIDER_OPENAI_COMPATIBLE, model=settings.model
    )


def select_api_key(decision: CostDecision, byo_api_key: str | None, settings: LLMSettings) -> str | None:
    """The key to send for `decision`: the user's, the server's, or None for the stub."""
    if decision.key_source == "user":
        return _clean(byo_api_key)
    if decision.key_source == "server":
        return settings.api_key
    return None


def _clean(key: str | None) -> str | None:
    key = (key or "").strip()
    return key or None
