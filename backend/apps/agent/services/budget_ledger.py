"""The spending ledger in Redis: every cap's counters, and reservations with leases, kept by Lua scripts so
that every worker process agrees (services/budgets.py decides who pays and answers the API with it).

Per scope (user or global) and period (day or month), three Redis keys:
    budget:v1:<scope>:<period>:<date>        hash: ready, spent, reserved, spent:<model>, reserved:<model>,
                                             calls:<model>  (amounts in nano-USD integers)
    ...:res                                  sorted set of reservation ids scored by lease expiry
    ...:amt                                  hash: reservation id -> "<nano-USD>|<model>"
One Lua script checks every applicable cap and reserves in all of them at once (atomic across every
worker process); it first drops reservations whose lease ended (a worker killed mid-call). A key that is
not `ready` (new period, Redis lost its data) is rebuilt from the recorded spend (services/spend.py: job rows
and synchronous calls' rows) before use. A batch's hold is a reservation like a call's, renewed while the
batch runs. See docs/costs.md.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings

from agent.budget import Refusal, Reservation
from apps.agent.services import spend
from apps.agent.services.shared_cache import redis_client

logger = logging.getLogger(__name__)

NANO = 1_000_000_000
PERIODS = ("day", "month")
PREFIX = "budget:v1"

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
        return f"{PREFIX}:{who}:{self.period}:{stamp}"

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


class _Scripts:
    """The Lua scripts, registered once per client (redis-py loads them with EVALSHA, NOSCRIPT-safe)."""

    def __init__(self, client: Any):
        self.reserve = client.register_script(_RESERVE)
        self.settle = client.register_script(_SETTLE)
        self.init = client.register_script(_INIT)
        self.renew = client.register_script(_RENEW)
        self.read = client.register_script(_READ)


_scripts: dict[int, _Scripts] = {}


def ledger_client() -> Any:
    """The shared Redis (the cache's). Raises RuntimeError when the cache is not Redis."""
    client = redis_client()
    if client is None:
        raise RuntimeError("Spending budgets need the Redis cache (CACHE_URL).")
    return client


def ledger_configured() -> bool:
    """Whether the ledger has a Redis (the cache is Redis); asks nothing of the server."""
    try:
        ledger_client()
    except RuntimeError:
        return False
    return True


def scripts_for(client: Any) -> _Scripts:
    scripts = _scripts.get(id(client))
    if scripts is None:
        scripts = _scripts[id(client)] = _Scripts(client)
    return scripts


def nano(amount_usd: float) -> int:
    """USD as whole nano-USD (rounded up: a reservation never holds less than the amount)."""
    return math.ceil(round(amount_usd * NANO, 3))


def usd(amount_nano: int | float) -> float:
    return round(amount_nano / NANO, 9)


def ensure_ready(client: Any, cap: Cap, now: datetime) -> None:
    """Rebuild `cap`'s counters from the recorded spend (jobs and synchronous calls, durable) unless Redis
    has them."""
    if client.hexists(cap.key, "ready"):
        return
    fields = [item for pair in recorded_counters(cap).items() for item in pair]
    scripts_for(client).init(keys=[cap.key], args=[cap.ttl(now), *fields])


def recorded_counters(cap: Cap) -> dict[str, int]:
    """`cap`'s counters as the recorded spend (jobs and synchronous calls) gives them: `spent`, and per model
    `spent:<model>` and `calls:<model>` (nano-USD; nothing reserved)."""
    owner_id = cap.owner_id if cap.scope == "user" else None
    counters = {"spent": 0}
    for model, (spent_usd, calls) in spend.spend_by_model(
        start=cap.start, end=cap.resets_at, owner_id=owner_id
    ).items():
        spent = nano(float(spent_usd))
        counters["spent"] += spent
        counters[f"spent:{model}"] = spent
        counters[f"calls:{model}"] = calls
    return counters


class RedisLedger:
    """The `agent.budget.SpendLedger` of one job's calls: every cap of its owner, in Redis.

    `hold` names the hold of the job's batch (`batch_hold`): the job's reservations are taken from it first.
    """

    def __init__(self, caps: list[Cap], *, hold: str = ""):
        self._caps = caps
        self._keys = [key for cap in caps for key in cap.keys]
        self._hold = hold

    def reserve(self, *, amount_usd: float, model: str, lease_sec: float) -> Reservation | Refusal:
        amount = nano(amount_usd)
        try:
            outcome = self.try_reserve(rid=uuid.uuid4().hex, amount=amount, model=model, lease_sec=lease_sec)
            if isinstance(outcome, Reservation):
                return outcome
            if outcome is not None:
                cap, spent, reserved, now = outcome
                return refusal(cap, spent=spent, reserved=reserved, needed=amount, now=now)
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
        client = ledger_client()
        scripts = scripts_for(client)
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
                args += [-1 if cap.limit_usd is None else nano(cap.limit_usd), cap.ttl(now)]
            answer = scripts.reserve(keys=self._keys, args=args)
            status = text(answer[0])
            if status == "init":
                ensure_ready(client, self._caps[int(answer[1]) - 1], now)
                continue
            if status == "refused":
                return self._caps[int(answer[1]) - 1], int(answer[2]), int(answer[3]), now
            return Reservation(id=rid, amount_usd=usd(amount))
        return None

    def settle(self, reservation: Reservation, *, cost_usd: float, model: str, charged: bool) -> None:
        try:
            scripts_for(ledger_client()).settle(
                keys=self._keys, args=[reservation.id, nano(cost_usd), model, "1" if charged else "0"]
            )
        except Exception as exc:  # the lease drops the reservation; the job row keeps the cost
            logger.warning("budget ledger unavailable at settle (%s)", type(exc).__name__)


def refusal(cap: Cap, *, spent: int, reserved: int, needed: int, now: datetime) -> Refusal:
    details = exceeded_details(cap, spent=spent, reserved=reserved, needed=needed, now=now)
    return Refusal(
        "budget_exceeded", exceeded_message(cap, details) + " The paid call was not made.", details
    )


def exceeded_message(cap: Cap, details: dict[str, Any]) -> str:
    who = "your" if cap.scope == "user" else "the deployment's"
    return (
        f"{who.capitalize()} {_PERIOD_WORD[cap.period]} budget of ${cap.limit_usd:g} is spent "
        f"(${details['spent_usd']:.6f} spent, ${details['reserved_usd']:.6f} reserved); it resets at "
        f"{details['resets_at']}."
    )


_PERIOD_WORD = {"day": "daily", "month": "monthly"}


def exceeded_details(cap: Cap, *, spent: int, reserved: int, needed: int, now: datetime) -> dict[str, Any]:
    return {
        "scope": cap.scope,
        "period": cap.period,
        "limit_usd": cap.limit_usd,
        "spent_usd": usd(spent),
        "reserved_usd": usd(reserved),
        "needed_usd": usd(needed),
        "resets_at": cap.resets_at.isoformat(),
        "retry_after_sec": max(1, math.ceil((cap.resets_at - now).total_seconds())),
    }


def hold_lease_sec() -> float:
    """How long a batch's hold outlives its last sign of life (its creation, a job of it reserving, the
    sweep's renewal while the batch runs): a hold whose batch was never committed (its process died) or
    stopped showing life is dropped after this, like a crashed call's reservation."""
    return settings.AGENT_BATCH_QUEUED_STALE_SEC


def counters_read(caps: list[Cap], now: datetime) -> list[dict[str, int]]:
    """Each cap's counters (nano-USD), rebuilt from the job rows first where Redis lacks them."""
    client = ledger_client()
    for cap in caps:
        ensure_ready(client, cap, now)
    raw = scripts_for(client).read(keys=[k for cap in caps for k in cap.keys], args=[time.time()])
    states = []
    for flat in raw:
        pairs = iter(flat)
        states.append({text(field): int(value) for field, value in zip(pairs, pairs, strict=True)})
    return states


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
