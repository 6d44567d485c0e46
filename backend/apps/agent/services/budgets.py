"""Spending budgets: the Redis ledger behind `agent.budget.BudgetedLLM`, admission at POST, usage reads.

Longer than ~400 lines (about 750): the Lua scripts, the key layout below and the batch holds share one
ledger; splitting the ledger (scripts, keys) from admission and usage reads is the next clean-up.

Who pays: only calls paid with the server's key (`key_source == "server"`: paid mode, and hybrid when it
fell back to the server key) count; a user's own key never does. Caps: per user (BUDGET_USER_*_USD or
the user's `UserBudget` row) and for the whole deployment (BUDGET_GLOBAL_*_USD), per UTC day and month.

The ledger keeps, per scope (user or global) and period (day or month), three Redis keys:
    budget:v1:<scope>:<period>:<date>        hash: ready, spent, reserved, spent:<model>, reserved:<model>,
                                             calls:<model>  (amounts in nano-USD integers)
    ...:res                                  sorted set of reservation ids scored by lease expiry
    ...:amt                                  hash: reservation id -> "<nano-USD>|<model>"
One Lua script checks every applicable cap and reserves in all of them at once (atomic across every
worker process); it first drops reservations whose lease ended (a worker killed mid-call). A key that is
not `ready` (new period, Redis lost its data) is rebuilt from the recorded spend (services/spend.py: job rows
and synchronous calls' rows) before use.
See docs/costs.md.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model

from agent.budget import (
    TOKENS_REPLY_PRIMER,
    BudgetedLLM,
    Refusal,
    Reservation,
    estimate_job_worst_case,
    worst_case_cost,
)
from agent.cost_policy import CostDecision
from apps.agent.models import AgentJob, Batch, UserBudget
from apps.agent.services import spend
from apps.agent.throttling import _redis_client
from core.errors import TooManyRequests, ValidationFailed

logger = logging.getLogger(__name__)

NANO = 1_000_000_000
PERIODS = ("day", "month")
SCOPES = ("user", "global")
_PREFIX = "budget:v1"

# Drops the reservations of KEYS (groups of hash, zset, amounts) whose lease ended before ARGV[1].
_CLEAN = """
local function clean(h, z, a, now)
  local ids = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  for _, id in ipairs(ids) do
    local v = redis.call('HGET', a, id)
    if v then
      local sep = string.find(v, '|', 1, true)
      local amt = tonumber(string.sub(v, 1, sep - 1))
      local model = string.sub(v, sep + 1)
      redis.call('HINCRBY', h, 'reserved', -amt)
      redis.call('HINCRBY', h, 'reserved:' .. model, -amt)
      redis.call('HDEL', a, id)
    end
  end
  if #ids > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', now) end
end
"""

# ARGV: now, lease expiry, reservation id, amount, model, hold id ('' for none), the hold's new lease
# expiry, then per group: limit (-1: none), key TTL. A reservation with a hold (a batch job's) takes what it
# can from that hold, which accepted work had already counted as reserved, and only the rest from the free
# budget; it also renews the hold's lease. Returns {'ok'}, {'init', group} (rebuild that key first) or
# {'refused', group, spent, reserved}.
_RESERVE = (
    _CLEAN
    + """
local now, expiry, rid, amount, model = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local hold, hold_expiry = ARGV[6], tonumber(ARGV[7])
local function held(a)
  if hold == '' then return 0, nil end
  local v = redis.call('HGET', a, hold)
  if not v then return 0, nil end
  local sep = string.find(v, '|', 1, true)
  return tonumber(string.sub(v, 1, sep - 1)), string.sub(v, sep + 1)
end
local n = #KEYS / 3
for i = 1, n do
  local h = KEYS[3 * i - 2]
  clean(h, KEYS[3 * i - 1], KEYS[3 * i], now)
  if redis.call('HEXISTS', h, 'ready') == 0 then return {'init', i} end
  local limit = tonumber(ARGV[6 + 2 * i])
  local spent = tonumber(redis.call('HGET', h, 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', h, 'reserved') or '0')
  local take = math.min(amount, (held(KEYS[3 * i])))
  if limit >= 0 and spent + reserved - take + amount > limit then
    return {'refused', i, spent, reserved}
  end
end
for i = 1, n do
  local h, z, a = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local ttl = tonumber(ARGV[7 + 2 * i])
  local have, hold_model = held(a)
  if hold_model then
    local take = math.min(amount, have)
    redis.call('HINCRBY', h, 'reserved', -take)
    redis.call('HINCRBY', h, 'reserved:' .. hold_model, -take)
    redis.call('HSET', a, hold, string.format('%d', have - take) .. '|' .. hold_model)
    if tonumber(redis.call('ZSCORE', z, hold) or '0') < hold_expiry then
      redis.call('ZADD', z, hold_expiry, hold)
    end
  end
  redis.call('HINCRBY', h, 'reserved', amount)
  redis.call('HINCRBY', h, 'reserved:' .. model, amount)
  redis.call('HSET', a, rid, ARGV[4] .. '|' .. model)
  redis.call('ZADD', z, expiry, rid)
  redis.call('EXPIRE', h, ttl)
  redis.call('EXPIRE', z, ttl)
  redis.call('EXPIRE', a, ttl)
end
return {'ok'}
"""
)

# ARGV: reservation id, cost, model, charged (1/0). Drops the reservation (if its lease has not ended
# already) and adds the cost to keys that are ready (a key rebuilt later reads the job rows instead).
# Releasing a batch's hold is settling it uncharged.
_SETTLE = """
local rid, cost, model, charged = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4] == '1'
for i = 1, #KEYS / 3 do
  local h, z, a = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local v = redis.call('HGET', a, rid)
  if v then
    local sep = string.find(v, '|', 1, true)
    local amt = tonumber(string.sub(v, 1, sep - 1))
    redis.call('HINCRBY', h, 'reserved', -amt)
    redis.call('HINCRBY', h, 'reserved:' .. string.sub(v, sep + 1), -amt)
    redis.call('HDEL', a, rid)
    redis.call('ZREM', z, rid)
  end
  if charged and redis.call('HEXISTS', h, 'ready') == 1 then
    redis.call('HINCRBY', h, 'spent', cost)
    redis.call('HINCRBY', h, 'spent:' .. model, cost)
    redis.call('HINCRBY', h, 'calls:' .. model, 1)
  end
end
return 1
"""

# ARGV: reservation id, new lease expiry. Extends the lease of a reservation (a batch's hold) wherever it is
# still held; one whose lease already ended is not brought back.
_RENEW = """
for i = 1, #KEYS / 3 do
  local z, a = KEYS[3 * i - 1], KEYS[3 * i]
  if redis.call('HEXISTS', a, ARGV[1]) == 1 then
    if tonumber(redis.call('ZSCORE', z, ARGV[1]) or '0') < tonumber(ARGV[2]) then
      redis.call('ZADD', z, ARGV[2], ARGV[1])
    end
  end
end
return 1
"""

# KEYS[1]: a hash; ARGV: TTL, then field, value pairs. Marks it ready with the rebuilt values, once.
_INIT = """
if redis.call('HEXISTS', KEYS[1], 'ready') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'ready', 1)
for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: groups of three; ARGV[1]: now. Drops ended leases and returns each group's hash.
_READ = (
    _CLEAN
    + """
local out = {}
for i = 1, #KEYS / 3 do
  clean(KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], tonumber(ARGV[1]))
  out[i] = redis.call('HGETALL', KEYS[3 * i - 2])
end
return out
"""
)


class BudgetExceeded(TooManyRequests):
    code = "budget_exceeded"


@dataclass(frozen=True)
class Cap:
    """One cap: scope `user` or `global`, period `day` or `month`, `limit_usd` None when unlimited."""

    scope: str
    period: str
    limit_usd: float | None
    owner_id: int | None
    start: datetime
    resets_at: datetime

    @property
    def key(self) -> str:
        stamp = self.start.strftime("%Y%m%d" if self.period == "day" else "%Y%m")
        who = f"user:{self.owner_id}" if self.scope == "user" else "global"
        return f"{_PREFIX}:{who}:{self.period}:{stamp}"

    @property
    def keys(self) -> list[str]:
        return [self.key, self.key + ":res", self.key + ":amt"]

    def ttl(self, now: datetime) -> int:
        """Seconds the keys live: to the end of the period and one more day (usage is read after)."""
        return int((self.resets_at - now).total_seconds()) + 86400


def period_bounds(now: datetime, period: str) -> tuple[datetime, datetime]:
    """The UTC day or month containing `now`: (start, start of the next one)."""
    now = now.astimezone(UTC)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


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


# --- the ledger -------------------------------------------------------------------------------------


class _Scripts:
    """The Lua scripts, registered once per client (redis-py loads them with EVALSHA, NOSCRIPT-safe)."""

    def __init__(self, client: Any):
        self.reserve = client.register_script(_RESERVE)
        self.settle = client.register_script(_SETTLE)
        self.init = client.register_script(_INIT)
        self.renew = client.register_script(_RENEW)
        self.read = client.register_script(_READ)


_scripts: dict[int, _Scripts] = {}


def _client() -> Any:
    """The shared Redis (the cache's). Raises RuntimeError when the cache is not Redis."""
    client = _redis_client()
    if client is None:
        raise RuntimeError("Spending budgets need the Redis cache (CACHE_URL).")
    return client


def _scripts_for(client: Any) -> _Scripts:
    scripts = _scripts.get(id(client))
    if scripts is None:
        scripts = _scripts[id(client)] = _Scripts(client)
    return scripts


def _nano(usd: float) -> int:
    return math.ceil(round(usd * NANO, 3))


def _usd(nano: int | float) -> float:
    return round(nano / NANO, 9)


def _ensure_ready(client: Any, cap: Cap, now: datetime) -> None:
    """Rebuild `cap`'s counters from the recorded spend (jobs and synchronous calls, durable) unless Redis
    has them."""
    if client.hexists(cap.key, "ready"):
        return
    values: list[Any] = []
    total = 0
    for model, (spent_usd, calls) in _recorded(cap).items():
        spent = _nano(float(spent_usd))
        total += spent
        values += [f"spent:{model}", spent, f"calls:{model}", calls]
    _scripts_for(client).init(keys=[cap.key], args=[cap.ttl(now), "spent", total, *values])


def _recorded(cap: Cap) -> dict[str, tuple[Decimal, int]]:
    owner_id = cap.owner_id if cap.scope == "user" else None
    return spend.spend_by_model(start=cap.start, end=cap.resets_at, owner_id=owner_id)


class RedisLedger:
    """The `agent.budget.SpendLedger` of one job's calls: every cap of its owner, in Redis.

    `hold` names the hold of the job's batch (`batch_hold`): the job's reservations are taken from it first.
    """

    def __init__(self, caps: list[Cap], *, hold: str = ""):
        self._caps = caps
        self._keys = [key for cap in caps for key in cap.keys]
        self._hold = hold

    def reserve(self, *, amount_usd: float, model: str, lease_sec: float) -> Reservation | Refusal:
        amount = _nano(amount_usd)
        try:
            outcome = self.try_reserve(rid=uuid.uuid4().hex, amount=amount, model=model, lease_sec=lease_sec)
            if isinstance(outcome, Reservation):
                return outcome
            if outcome is not None:
                cap, spent, reserved, now = outcome
                return _refusal(cap, spent=spent, reserved=reserved, needed=amount, now=now)
            reason = "counters keep disappearing"  # flushed while we rebuilt them, every time
        except Exception as exc:  # Redis down or misconfigured: fail closed, a paid call needs a ledger
            reason = type(exc).__name__
        logger.warning("budget ledger unavailable (%s): the paid call is not made", reason)
        return Refusal(
            "budget_unavailable",
            "The spending ledger is unavailable, so the paid call was not made.",
            {"reason": reason},
        )

    def try_reserve(
        self, *, rid: str, amount: int, model: str, lease_sec: float
    ) -> Reservation | tuple[Cap, int, int, datetime] | None:
        """Reserve `amount` nano-USD under `rid` in every cap at once: the reservation, or (the cap that
        refused, its spent, its reserved, now), or None when the counters vanished at every try. Raises
        when Redis does."""
        client = _client()
        scripts = _scripts_for(client)
        for _ in range(len(self._caps) + 1):
            now = datetime.now(UTC)
            clock = time.time()
            args: list[Any] = [
                clock,
                clock + lease_sec,
                rid,
                amount,
                model,
                self._hold,
                clock + hold_lease_sec(),
            ]
            for cap in self._caps:
                args += [-1 if cap.limit_usd is None else _nano(cap.limit_usd), cap.ttl(now)]
            answer = scripts.reserve(keys=self._keys, args=args)
            status = _text(answer[0])
            if status == "init":
                _ensure_ready(client, self._caps[int(answer[1]) - 1], now)
                continue
            if status == "refused":
                return self._caps[int(answer[1]) - 1], int(answer[2]), int(answer[3]), now
            return Reservation(id=rid, amount_usd=_usd(amount))
        return None

    def settle(self, reservation: Reservation, *, cost_usd: float, model: str, charged: bool) -> None:
        try:
            _scripts_for(_client()).settle(
                keys=self._keys, args=[reservation.id, _nano(cost_usd), model, "1" if charged else "0"]
            )
        except Exception as exc:  # the lease drops the reservation; the job row keeps the cost
            logger.warning("budget ledger unavailable at settle (%s)", type(exc).__name__)


def _refusal(cap: Cap, *, spent: int, reserved: int, needed: int, now: datetime) -> Refusal:
    details = _exceeded_details(cap, spent=spent, reserved=reserved, needed=needed, now=now)
    return Refusal(
        "budget_exceeded", _exceeded_message(cap, details) + " The paid call was not made.", details
    )


def _exceeded_message(cap: Cap, details: dict[str, Any]) -> str:
    who = "your" if cap.scope == "user" else "the deployment's"
    return (
        f"{who.capitalize()} {_PERIOD_WORD[cap.period]} budget of ${cap.limit_usd:g} is spent "
        f"(${details['spent_usd']:.6f} spent, ${details['reserved_usd']:.6f} reserved); it resets at "
        f"{details['resets_at']}."
    )


_PERIOD_WORD = {"day": "daily", "month": "monthly"}


def _exceeded_details(cap: Cap, *, spent: int, reserved: int, needed: int, now: datetime) -> dict[str, Any]:
    return {
        "scope": cap.scope,
        "period": cap.period,
        "limit_usd": cap.limit_usd,
        "spent_usd": _usd(spent),
        "reserved_usd": _usd(reserved),
        "needed_usd": _usd(needed),
        "resets_at": cap.resets_at.isoformat(),
        "retry_after_sec": max(1, math.ceil((cap.resets_at - now).total_seconds())),
    }


def budget_guard(runnable: Any, *, owner_id: int, decision: CostDecision | AgentJob) -> Any:
    """`runnable` wrapped in a `BudgetedLLM` when its calls are paid with the server's key (per the
    recorded `decision`, a job row carries the same fields) and a cap applies to `owner_id`; else
    `runnable` unchanged (BYO keys and the stub never count)."""
    if not _is_server_paid(decision) or decision.provider == "stub":
        return runnable
    caps = budget_caps(owner_id=owner_id)
    if not _applies(caps):
        return runnable
    batch_id = decision.batch_id if isinstance(decision, AgentJob) else None
    return BudgetedLLM(
        runnable,
        RedisLedger(caps, hold=_hold_id(batch_id) if batch_id else ""),
        price=settings.LLM.price_of(decision.model),
        max_tokens=settings.LLM.max_tokens,
        lease_margin_sec=settings.AGENT_RUNNING_GRACE_SEC,
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
    details = _exceeded_details(cap, spent=spent, reserved=reserved, needed=needed, now=now)
    return BudgetExceeded(
        _exceeded_message(cap, details),
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
    needed = _nano(worst_case_cost(TOKENS_REPLY_PRIMER, settings.LLM.max_tokens, price))
    now = datetime.now(UTC)
    try:
        states = _read(caps, now)
    except Exception as exc:
        logger.warning("budget ledger unavailable at admission (%s); admitting", type(exc).__name__)
        return
    for cap, state in zip(caps, states, strict=True):
        if cap.limit_usd is None:
            continue
        spent, reserved = state.get("spent", 0), state.get("reserved", 0)
        if spent + reserved + needed > _nano(cap.limit_usd):
            raise _exceeded(cap, spent=spent, reserved=reserved, needed=needed, now=now)


# --- a batch's hold ----------------------------------------------------------------------------------


def hold_lease_sec() -> float:
    """How long a batch's hold outlives its last sign of life (its creation, a job of it reserving, the
    sweep's renewal while the batch runs): a hold whose batch was never committed (its process died) or
    stopped showing life is dropped after this, like a crashed call's reservation."""
    return settings.AGENT_BATCH_QUEUED_STALE_SEC


def _hold_id(batch_id: Any) -> str:
    return f"hold:batch:{batch_id}"


def _hold_record(batch_id: Any) -> str:
    """Where a hold's counter keys are kept: the periods it was placed in, whatever the clock says later."""
    return f"{_PREFIX}:holds:{batch_id}"


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
    needed = _nano(amount_usd)
    ledger = RedisLedger(caps)
    try:
        outcome = ledger.try_reserve(
            rid=_hold_id(batch_id), amount=needed, model=decision.model, lease_sec=hold_lease_sec()
        )
        if isinstance(outcome, Reservation):
            now = datetime.now(UTC)
            ttl = max(cap.ttl(now) for cap in caps)
            _client().set(_hold_record(batch_id), " ".join(cap.key for cap in caps), ex=ttl)
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
    return [key + suffix for key in _text(record).split() for suffix in ("", ":res", ":amt")]


def batch_hold_release(*, batch_id: Any) -> None:
    """Free what is left of a batch's hold (it completed, was cancelled, or was never created). Idempotent;
    a Redis error is logged and the hold's lease frees it later."""
    try:
        client = _client()
    except RuntimeError:  # the cache is not Redis: budgets are off, nothing was held
        return
    try:
        keys = _hold_keys(client, batch_id)
        if keys:
            _scripts_for(client).settle(keys=keys, args=[_hold_id(batch_id), 0, "", "0"])
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
        client = _client()
    except RuntimeError:  # the cache is not Redis: budgets are off, nothing was held
        return renewed
    try:
        expiry = time.time() + hold_lease_sec()
        for batch_id in batch_ids:
            keys = _hold_keys(client, batch_id)
            if keys:
                _scripts_for(client).renew(keys=keys, args=[_hold_id(batch_id), expiry])
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


def _read(caps: list[Cap], now: datetime) -> list[dict[str, int]]:
    """Each cap's counters (nano-USD), rebuilt from the job rows first where Redis lacks them."""
    client = _client()
    for cap in caps:
        _ensure_ready(client, cap, now)
    raw = _scripts_for(client).read(keys=[k for cap in caps for k in cap.keys], args=[time.time()])
    states = []
    for flat in raw:
        pairs = iter(flat)
        states.append({_text(field): int(value) for field, value in zip(pairs, pairs, strict=True)})
    return states


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
            states = _read(mine, now)
        except Exception as exc:
            logger.warning("budget ledger unavailable for usage (%s); reading job rows", type(exc).__name__)
    periods = {}
    for index, cap in enumerate(mine):
        state = states[index] if states is not None else _db_state(cap)
        periods[cap.period] = _period_view(cap, state, tracked=states is not None)
    return {"user": {"id": user.pk, "username": user.get_username()}, "periods": periods}


def _db_state(cap: Cap) -> dict[str, int]:
    state = {"spent": 0}
    for model, (spent_usd, calls) in _recorded(cap).items():
        spent = _nano(float(spent_usd))
        state["spent"] += spent
        state[f"spent:{model}"] = spent
        state[f"calls:{model}"] = calls
    return state


def _period_view(cap: Cap, state: dict[str, int], *, tracked: bool) -> dict[str, Any]:
    spent, reserved = state.get("spent", 0), state.get("reserved", 0)
    models = sorted({f.split(":", 1)[1] for f in state if ":" in f})
    by_model = [
        {
            "model": model,
            "spent_usd": _usd(state.get(f"spent:{model}", 0)),
            "reserved_usd": _usd(state.get(f"reserved:{model}", 0)),
            "calls": state.get(f"calls:{model}", 0),
        }
        for model in models
    ]
    remaining = None if cap.limit_usd is None else max(0.0, round(cap.limit_usd - _usd(spent + reserved), 9))
    return {
        "start": cap.start,
        "resets_at": cap.resets_at,
        "limit_usd": cap.limit_usd,
        "spent_usd": _usd(spent),
        "reserved_usd": _usd(reserved),
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
