"""Spending budgets: who pays and under which caps, the guard of a job's paid calls (`BudgetedLLM`),
admission at POST, a batch's hold, and usage reads. The counters live in the Redis ledger
(services/budget_ledger.py).

Who pays: only calls paid with the server's key (`key_source == "server"`: paid mode, and hybrid when it
fell back to the server key) count; a user's own key never does. Caps: per user (BUDGET_USER_*_USD or
the user's `UserBudget` row) and for the whole deployment (BUDGET_GLOBAL_*_USD), per UTC day and month.
See docs/costs.md.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model

from agent.budget import (
    TOKENS_REPLY_PRIMER,
    BudgetedLLM,
    Reservation,
    estimate_job_worst_case,
    worst_case_cost,
)
from agent.cost_policy import CostDecision
from apps.agent.models import AgentJob, Batch, UserBudget
from apps.agent.services import budget_ledger, spend
from apps.agent.services.budget_ledger import (
    PERIODS,
    PREFIX,
    Cap,
    RedisLedger,
    counters_read,
    exceeded_details,
    exceeded_message,
    hold_lease_sec,
    nano,
    period_bounds,
    recorded_counters,
    scripts_for,
    text,
    usd,
)
from core.errors import TooManyRequests, ValidationFailed

logger = logging.getLogger(__name__)


class BudgetExceeded(TooManyRequests):
    code = "budget_exceeded"


def user_limits(owner_id: int) -> dict[str, float | None]:
    """The user's caps in USD per period: their `UserBudget` override, else the BUDGET_USER_* defaults."""
    defaults = settings.BUDGETS
    limits = {"day": defaults.user_daily_usd, "month": defaults.user_monthly_usd}
    override = UserBudget.objects.filter(user_id=owner_id).first()
    if override is not None:
        if override.unlimited:
            return {"day": None, "month": None}
        if override.daily_usd is not None:
            limits["day"] = float(override.daily_usd)
        if override.monthly_usd is not None:
            limits["month"] = float(override.monthly_usd)
    return limits


def budget_caps(*, owner_id: int, now: datetime | None = None) -> list[Cap]:
    """The four caps of a call by `owner_id` (user and global, day and month), unlimited ones included."""
    now = now or datetime.now(UTC)
    mine = user_limits(owner_id)
    defaults = settings.BUDGETS
    theirs = {"day": defaults.global_daily_usd, "month": defaults.global_monthly_usd}
    caps = []
    for scope, limits in (("user", mine), ("global", theirs)):
        for period in PERIODS:
            start, end = period_bounds(now, period)
            owner = owner_id if scope == "user" else None
            caps.append(Cap(scope, period, limits[period], owner, start, end))
    return caps


def _applies(caps: list[Cap]) -> bool:
    return any(cap.limit_usd is not None for cap in caps)


def _is_server_paid(decision: CostDecision | AgentJob) -> bool:
    return decision.key_source == "server"


def budget_guard(runnable: Any, *, owner_id: int, decision: CostDecision | AgentJob) -> Any:
    """`runnable` wrapped in a `BudgetedLLM` when its calls are paid with the server's key (per the
    recorded `decision`, a job row carries the same fields); else `runnable` unchanged (BYO keys and the
    stub never count).

    When a cap applies to `owner_id` the wrapper enforces the caps. When none does it only counts: the
    call's cost is added to those of its counters that Redis already keeps (nothing is reserved, nothing
    refused, a Redis failure does not stop the call). Without that, the global counter that capped users'
    calls keep would miss the uncapped users' spend, and a global cap set later in the period would start
    from it; so would a user's own counter after a spell without caps.
    """
    if not _is_server_paid(decision) or decision.provider == "stub":
        return runnable
    caps = budget_caps(owner_id=owner_id)
    enforce = _applies(caps)
    if not enforce and not budget_ledger.ledger_configured():
        return runnable  # no Redis cache: no counters to keep complete (a cap would need one)
    batch_id = decision.batch_id if isinstance(decision, AgentJob) else None
    return BudgetedLLM(
        runnable,
        RedisLedger(caps, hold=_hold_id(batch_id) if batch_id else ""),
        price=settings.LLM.price_of(decision.model),
        max_tokens=settings.LLM.max_tokens,
        lease_margin_sec=settings.AGENT_RUNNING_GRACE_SEC,
        enforce=enforce,
    )


# --- admission (POST) --------------------------------------------------------------------------------


def _admission_caps(*, owner, decision: CostDecision) -> tuple[list[Cap], tuple[float, float]] | None:
    """The caps a submission by `owner` is admitted against and the model's price; None when no cap
    applies (not paid with the server's key, the stub, or no cap set). Raises `ValidationFailed`
    (`budget_unpriced_model`) when a cap applies to a model without a price."""
    if not _is_server_paid(decision) or decision.provider == "stub":
        return None
    caps = budget_caps(owner_id=owner.pk)
    if not _applies(caps):
        return None
    price = settings.LLM.price_of(decision.model)
    if price is None:
        raise ValidationFailed(
            f"The model {decision.model!r} has no price in LLM_PRICES, so a spending budget cannot cap "
            "it: paid calls to it are refused.",
            code="budget_unpriced_model",
            details={"model": decision.model},
        )
    return caps, price


def _exceeded(cap: Cap, *, spent: int, reserved: int, needed: int, now: datetime) -> BudgetExceeded:
    details = exceeded_details(cap, spent=spent, reserved=reserved, needed=needed, now=now)
    return BudgetExceeded(
        exceeded_message(cap, details),
        details=details,
        headers={"Retry-After": str(details["retry_after_sec"])},
    )


def budget_admit(*, owner, decision: CostDecision) -> None:
    """Refuse a job (or a synchronous call) that cannot fit: 429 `budget_exceeded` when the cheapest
    possible call (an empty prompt) does not fit in what is left of a cap (details: the cap's period, spent,
    reset time; header Retry-After), or 400 `budget_unpriced_model` when a cap applies to a model without a
    price. Holds nothing: the worker reserves the call's worst case when it runs.

    Fails open when Redis is unreachable: the worker's reservation (which fails closed) still guards.
    """
    admission = _admission_caps(owner=owner, decision=decision)
    if admission is None:
        return
    caps, price = admission
    needed = nano(worst_case_cost(TOKENS_REPLY_PRIMER, settings.LLM.max_tokens, price))
    now = datetime.now(UTC)
    try:
        states = counters_read(caps, now)
    except Exception as exc:
        logger.warning("budget ledger unavailable at admission (%s); admitting", type(exc).__name__)
        return
    for cap, state in zip(caps, states, strict=True):
        if cap.limit_usd is None:
            continue
        spent, reserved = state.get("spent", 0), state.get("reserved", 0)
        if spent + reserved + needed > nano(cap.limit_usd):
            raise _exceeded(cap, spent=spent, reserved=reserved, needed=needed, now=now)


# --- a batch's hold ----------------------------------------------------------------------------------


def _hold_id(batch_id: Any) -> str:
    return f"hold:batch:{batch_id}"


def _hold_record(batch_id: Any) -> str:
    """Where a hold's counter keys are kept: the periods it was placed in, whatever the clock says later."""
    return f"{PREFIX}:holds:{batch_id}"


def batch_hold(*, owner, decision: CostDecision, batch_id: Any, amount_usd: float | None) -> bool:
    """Admit a batch whole: hold its worst case `amount_usd` in every cap of `owner` at once (atomically,
    across processes), so that a batch accepted is a batch that fits. Its jobs' reservations are then
    taken from the hold (`RedisLedger`), and `batch_hold_release` frees what is left.

    Returns whether a hold was placed: False when no cap applies, or when Redis is unreachable (admitted
    without a hold, logged: the worker's reservations, which fail closed, still guard). Raises
    `BudgetExceeded` (429, `details.needed_usd` = the estimate) when it does not fit, `ValidationFailed`
    (`budget_unpriced_model`) for a capped model without a price.
    """
    admission = _admission_caps(owner=owner, decision=decision)
    if admission is None or amount_usd is None:
        return False
    caps, _ = admission
    needed = nano(amount_usd)
    ledger = RedisLedger(caps)
    try:
        outcome = ledger.try_reserve(
            rid=_hold_id(batch_id), amount=needed, model=decision.model, lease_sec=hold_lease_sec()
        )
        if isinstance(outcome, Reservation):
            now = datetime.now(UTC)
            ttl = max(cap.ttl(now) for cap in caps)
            budget_ledger.ledger_client().set(
                _hold_record(batch_id), " ".join(cap.key for cap in caps), ex=ttl
            )
            return True
    except Exception as exc:
        logger.warning("budget ledger unavailable for a batch's hold (%s); admitting", type(exc).__name__)
        return False
    if outcome is None:
        logger.warning("budget counters keep disappearing; batch %s admitted without a hold", batch_id)
        return False
    cap, spent, reserved, now = outcome
    raise _exceeded(cap, spent=spent, reserved=reserved, needed=needed, now=now)


def _hold_keys(client: Any, batch_id: Any) -> list[str]:
    record = client.get(_hold_record(batch_id))
    if not record:
        return []
    return [key + suffix for key in text(record).split() for suffix in ("", ":res", ":amt")]


def batch_hold_release(*, batch_id: Any) -> None:
    """Free what is left of a batch's hold (it completed, was cancelled, or was never created). Idempotent;
    a Redis error is logged and the hold's lease frees it later."""
    try:
        client = budget_ledger.ledger_client()
    except RuntimeError:  # the cache is not Redis: budgets are off, nothing was held
        return
    try:
        keys = _hold_keys(client, batch_id)
        if keys:
            scripts_for(client).settle(keys=keys, args=[_hold_id(batch_id), 0, "", "0"])
        client.delete(_hold_record(batch_id))
    except Exception as exc:
        logger.warning("could not release the hold of batch %s (%s)", batch_id, type(exc).__name__)


def batch_holds_renew() -> int:
    """Extend the lease of the holds of the batches still running (the sweep calls it, so a batch waiting
    long at low priority keeps its hold). Returns how many holds it found; a Redis error is logged (the
    holds live on until their lease ends)."""
    running = Batch.objects.filter(completed_at__isnull=True, estimated_cost_usd__isnull=False)
    batch_ids = list(running.order_by().values_list("id", flat=True)[:1000])
    if not batch_ids:
        return 0
    renewed = 0
    try:
        client = budget_ledger.ledger_client()
    except RuntimeError:  # the cache is not Redis: budgets are off, nothing was held
        return renewed
    try:
        expiry = time.time() + hold_lease_sec()
        for batch_id in batch_ids:
            keys = _hold_keys(client, batch_id)
            if keys:
                scripts_for(client).renew(keys=keys, args=[_hold_id(batch_id), expiry])
                renewed += 1
    except Exception as exc:
        logger.warning("could not renew batch holds (%s)", type(exc).__name__)
    return renewed


def batch_worst_case(*, decision: CostDecision, items: list[tuple[str, int]]) -> float | None:
    """The worst-case USD of a batch's paid calls (`items`: query, top_k), or None when they are not paid
    with the server's key or the model has no price."""
    if not _is_server_paid(decision) or decision.provider == "stub":
        return None
    price = settings.LLM.price_of(decision.model)
    if price is None:
        return None
    max_tokens = settings.LLM.max_tokens
    return sum(estimate_job_worst_case(query, top_k, max_tokens, price) for query, top_k in items)


# --- usage (GET /api/agent/usage) ---------------------------------------------------------------------


def budget_usage_get(*, user) -> dict[str, Any]:
    """What `user` spent and holds reserved this UTC day and month, per model, against their caps.

    Read from the ledger (what enforcement sees) when a cap applies; else from the job rows (spent only).
    """
    now = datetime.now(UTC)
    caps = budget_caps(owner_id=user.pk, now=now)
    mine = [cap for cap in caps if cap.scope == "user"]
    states: list[dict[str, int]] | None = None
    if _applies(caps):
        try:
            states = counters_read(mine, now)
        except Exception as exc:
            logger.warning("budget ledger unavailable for usage (%s); reading job rows", type(exc).__name__)
    periods = {}
    for index, cap in enumerate(mine):
        state = states[index] if states is not None else recorded_counters(cap)
        periods[cap.period] = _period_view(cap, state, tracked=states is not None)
    return {"user": {"id": user.pk, "username": user.get_username()}, "periods": periods}


def _period_view(cap: Cap, state: dict[str, int], *, tracked: bool) -> dict[str, Any]:
    spent, reserved = state.get("spent", 0), state.get("reserved", 0)
    models = sorted({f.split(":", 1)[1] for f in state if ":" in f})
    by_model = [
        {
            "model": model,
            "spent_usd": usd(state.get(f"spent:{model}", 0)),
            "reserved_usd": usd(state.get(f"reserved:{model}", 0)),
            "calls": state.get(f"calls:{model}", 0),
        }
        for model in models
    ]
    remaining = None if cap.limit_usd is None else max(0.0, round(cap.limit_usd - usd(spent + reserved), 9))
    return {
        "start": cap.start,
        "resets_at": cap.resets_at,
        "limit_usd": cap.limit_usd,
        "spent_usd": usd(spent),
        "reserved_usd": usd(reserved),
        "remaining_usd": remaining,
        "tracked": tracked,
        "by_model": [row for row in by_model if row["spent_usd"] or row["reserved_usd"] or row["calls"]],
    }


def budget_usage_list() -> list[dict[str, Any]]:
    """Every user's server-key spend this UTC day and month (jobs and synchronous calls, from the database),
    largest first, with their caps: what staff see at GET /api/agent/usage/users and the admin lists."""
    now = datetime.now(UTC)
    users = spend.spend_by_user_annotate(
        get_user_model().objects.all(),
        day_start=period_bounds(now, "day")[0],
        month_start=period_bounds(now, "month")[0],
    )
    out = []
    for user in users.filter(month_usd__gt=0).order_by("-month_usd", "username"):
        limits = user_limits(user.pk)
        out.append(
            {
                "user": {"id": user.pk, "username": user.get_username()},
                "day_spent_usd": float(user.day_usd),
                "month_spent_usd": float(user.month_usd),
                "month_calls": user.month_calls,
                "day_limit_usd": limits["day"],
                "month_limit_usd": limits["month"],
            }
        )
    return out
