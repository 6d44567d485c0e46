"""Spending budgets around a paid LLM call: reserve the worst case, call, settle with the real cost.

Framework-free. A `SpendLedger` (the Django app's Redis ledger in production, a dict in tests) keeps the
counters; `BudgetedLLM` wraps the job's runnable so that the pipeline calls it like any other: a call that
cannot reserve is not made and comes back as an LLM error `budget_exceeded`, which the pipeline turns into
a degraded answer (the retrieved books, no paid call) with the reason in the trace.

Only calls paid with the server's key go through here; calls with a user's own key are never wrapped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.config import PROVIDER_OPENAI_COMPATIBLE, CostMode, LLMSettings
from agent.language import detect_language
from agent.llm_factory import stream_llm, to_messages
from agent.prompts import SYNOPSIS_MAX_CHARS, build_grounded_prompt
from core.env import Env, env_error, parse_float
from core.errors import ImproperlyConfigured

#: Chat formats add a few tokens per message and to prime the reply (OpenAI documents 3-4).
TOKENS_PER_MESSAGE = 4
TOKENS_REPLY_PRIMER = 3

BUDGET_VARIABLES = (
    "BUDGET_USER_DAILY_USD",
    "BUDGET_USER_MONTHLY_USD",
    "BUDGET_GLOBAL_DAILY_USD",
    "BUDGET_GLOBAL_MONTHLY_USD",
)


@dataclass(frozen=True)
class BudgetSettings:
    """Default caps in USD; None means unlimited. Per-user overrides live in the database (admin)."""

    user_daily_usd: float | None = None
    user_monthly_usd: float | None = None
    global_daily_usd: float | None = None
    global_monthly_usd: float | None = None

    def __post_init__(self) -> None:
        for name, value in zip(BUDGET_VARIABLES, self._values(), strict=True):
            if value is not None and not (
                isinstance(value, int | float) and math.isfinite(value) and value >= 0
            ):
                raise env_error(name, value, "an amount in USD >= 0, or empty for unlimited")

    def _values(self) -> tuple[float | None, ...]:
        return (self.user_daily_usd, self.user_monthly_usd, self.global_daily_usd, self.global_monthly_usd)

    @property
    def any_set(self) -> bool:
        return any(value is not None for value in self._values())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BudgetSettings:
        """Read the `BUDGET_*` variables (empty = unlimited). Raises `ImproperlyConfigured` naming one."""
        env = Env(environ)

        def get(name: str) -> float | None:
            raw = env.raw(name)
            return parse_float(name, raw, minimum=0.0) if raw else None

        return cls(
            user_daily_usd=get("BUDGET_USER_DAILY_USD"),
            user_monthly_usd=get("BUDGET_USER_MONTHLY_USD"),
            global_daily_usd=get("BUDGET_GLOBAL_DAILY_USD"),
            global_monthly_usd=get("BUDGET_GLOBAL_MONTHLY_USD"),
        )


def check_budget_prices(budgets: BudgetSettings, llm: LLMSettings) -> None:
    """At start-up: a budget cannot cap a model without a price, so refuse that configuration loudly.

    Raises `ImproperlyConfigured` when a `BUDGET_*` default is set, the server key pays for calls
    (`paid`/`hybrid` with `LLM_API_KEY`) and `LLM_MODEL` has no entry in `LLM_PRICES`. Per-job model
    overrides and per-user budgets set in the admin are checked at the call (`budget_unpriced_model`).
    """
    if not budgets.any_set or llm.provider != PROVIDER_OPENAI_COMPATIBLE or not llm.api_key:
        return
    if llm.cost_mode is CostMode.BYO_KEY or llm.price_of(llm.model) is not None:
        return
    raise ImproperlyConfigured(
        f"A spending budget is set ({', '.join(BUDGET_VARIABLES)}) but LLM_MODEL={llm.model!r} has no "
        f"price in LLM_PRICES: an unpriced model cannot be "
        f"capped. Add it, e.g. LLM_PRICES={llm.model}=0.15/0.60 (USD per million input/output tokens)."
    )


def worst_case_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """An upper bound of the prompt's tokens: one per UTF-8 byte, plus the chat format's overhead.

    Byte-level BPE tokenizers (GPT, Llama 3) never make more tokens than bytes, so unlike the offline
    estimate (four characters per token) this bound holds whatever the provider counts.
    """
    content = sum(len(str(m.get("content") or "").encode()) for m in messages)
    return content + TOKENS_PER_MESSAGE * len(messages) + TOKENS_REPLY_PRIMER


def worst_case_cost(prompt_tokens: int, max_tokens: int, price: tuple[float, float]) -> float:
    """USD for `prompt_tokens` in and `max_tokens` out at `price` (USD per million, in/out)."""
    return (prompt_tokens * price[0] + max_tokens * price[1]) / 1_000_000


#: Bytes one book line of the grounded prompt takes at most in an estimate: the synopsis is cut to
#: SYNOPSIS_MAX_CHARS (two bytes each for accented text), plus title, author, year and genres.
BOOK_LINE_ESTIMATE_BYTES = 2 * SYNOPSIS_MAX_CHARS + 400


def estimate_job_worst_case(query: str, top_k: int, max_tokens: int, price: tuple[float, float]) -> float:
    """The worst-case USD of one job's paid call, before retrieval: its grounded prompt with `top_k` books
    of `BOOK_LINE_ESTIMATE_BYTES` each. An estimate (a batch shows it); the call itself reserves its real
    prompt's bound."""
    messages = build_grounded_prompt(query, [], detect_language(query))
    prompt_tokens = worst_case_prompt_tokens(messages) + top_k * BOOK_LINE_ESTIMATE_BYTES
    return worst_case_cost(prompt_tokens, max_tokens, price)


@dataclass(frozen=True)
class Reservation:
    """Money held for one call until it is settled; `lease_sec` after which the ledger drops it."""

    id: str
    amount_usd: float


@dataclass(frozen=True)
class Refusal:
    """Why a reservation was refused. `code` is `budget_exceeded` or `budget_unavailable`."""

    code: str
    message: str
    details: dict[str, Any]


class SpendLedger(Protocol):
    """Shared counters of one user's (and the deployment's) spend. Implementations must be atomic
    across processes: two reservations that do not both fit must not both succeed."""

    def reserve(self, *, amount_usd: float, model: str, lease_sec: float) -> Reservation | Refusal: ...

    def settle(self, reservation: Reservation, *, cost_usd: float, model: str, charged: bool) -> None: ...


class BudgetedLLM:
    """A runnable whose calls reserve their worst case in `ledger` first and settle their real cost after.

    `price` is the model's (input, output) USD per million tokens, or None: an unpriced model cannot be
    capped, so every call is refused with `budget_unpriced_model`. `lease_margin_sec` is added to the
    call's deadline for the reservation's lease: a worker killed mid-call leaves a reservation that the
    ledger drops once the lease ends.

    With `enforce=False` nothing is reserved or refused (an unpriced model included): each call is only
    settled, so that its cost still reaches the ledger's counters (no cap applies to this caller, but
    counters shared with others, or kept for a cap set later, must not miss it).
    """

    def __init__(
        self,
        inner: Any,
        ledger: SpendLedger,
        *,
        price: tuple[float, float] | None,
        max_tokens: int,
        lease_margin_sec: float = 15.0,
        enforce: bool = True,
    ):
        self._inner = inner
        self._ledger = ledger
        self._price = price
        self._max_tokens = max_tokens
        self._lease_margin_sec = lease_margin_sec
        self._enforce = enforce

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def invoke(self, prompt: Any, *, deadline: float | None = None) -> dict[str, Any]:
        outcome = self._reserve(prompt, deadline)
        if isinstance(outcome, Refusal):
            return self._refused(outcome)
        try:
            result = self._inner.invoke(prompt, deadline=deadline)
        except BaseException:
            self._ledger.settle(outcome, cost_usd=0.0, model=self._inner.model, charged=False)
            raise
        self._settle(outcome, result)
        return result

    def stream(self, prompt: Any, *, on_delta: Any, deadline: float | None = None) -> dict[str, Any]:
        """`invoke`, streamed (`llm_factory.stream_llm`): the same reservation before and settlement after.

        A stream stopped by `on_delta` (a cancelled job) was paid for up to that point: the exception
        carries what the call cost so far (`llm_result`, from the streaming layer), which is charged; a
        call stopped before it produced any text settles as not charged, like `invoke`.
        """
        outcome = self._reserve(prompt, deadline)
        if isinstance(outcome, Refusal):
            return self._refused(outcome)
        try:
            result = stream_llm(self._inner, prompt, on_delta=on_delta, deadline=deadline)
        except BaseException as exc:
            self._settle(outcome, getattr(exc, "llm_result", None) or {"error": "interrupted"})
            raise
        self._settle(outcome, result)
        return result

    async def ainvoke(self, prompt: Any, *, deadline: float | None = None) -> dict[str, Any]:
        outcome = self._reserve(prompt, deadline)
        if isinstance(outcome, Refusal):
            return self._refused(outcome)
        try:
            result = await self._inner.ainvoke(prompt, deadline=deadline)
        except BaseException:
            self._ledger.settle(outcome, cost_usd=0.0, model=self._inner.model, charged=False)
            raise
        self._settle(outcome, result)
        return result

    def _reserve(self, prompt: Any, deadline: float | None) -> Reservation | Refusal:
        if not self._enforce:
            return Reservation(id="", amount_usd=0.0)  # nothing held: the settlement only counts the cost
        model = self._inner.model
        if self._price is None:
            return Refusal(
                "budget_unpriced_model",
                f"The model {model!r} has no price in LLM_PRICES, so a spending budget cannot cap it: "
                "the call was not made.",
                {"model": model},
            )
        amount = worst_case_cost(worst_case_prompt_tokens(to_messages(prompt)), self._max_tokens, self._price)
        lease = max(deadline or 0.0, 0.0) + self._lease_margin_sec
        return self._ledger.reserve(amount_usd=amount, model=model, lease_sec=lease)

    def _settle(self, reservation: Reservation, result: dict[str, Any]) -> None:
        # A failed call is charged only when it cost something (a stream that broke after text arrived).
        cost = float(result.get("cost_usd") or 0.0)
        charged = not result.get("error") or cost > 0
        self._ledger.settle(reservation, cost_usd=cost, model=self._inner.model, charged=charged)

    def _refused(self, refusal: Refusal) -> dict[str, Any]:
        return {
            "content": "",
            "provider": self._inner.provider,
            "model": self._inner.model,
            "latency_ms": 0.0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "usage_estimated": False,
            "cost_usd": 0.0,
            "cost_unknown": False,
            "attempts": 0,
            "retry_after_sec": refusal.details.get("retry_after_sec"),
            "error": {"code": refusal.code, "message": refusal.message, "details": refusal.details},
        }
