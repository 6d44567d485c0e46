"""Per-user throttles on job and batch creation, counted in the shared cache (Redis) across processes.

They key on the authenticated user only (never on X-Forwarded-For or other client-set headers), and fail
open when the cache is unreachable: the job row is durable, and refusing work because a rate counter is
down would turn a cache outage into an API outage.
"""

from __future__ import annotations

import logging

from rest_framework.throttling import UserRateThrottle

from apps.agent.services.shared_cache import redis_client as _redis_client

logger = logging.getLogger(__name__)


class FailOpenUserRateThrottle(UserRateThrottle):
    """A fixed window per user, counted with an atomic increment in the shared cache.

    DRF's own throttle reads the request history, appends and writes it back: two API processes serving
    the same user at the same moment both read N-1 and both let their request through, so a burst gets
    past the limit. Here the first request of a window creates the counter with the window's TTL
    (`add`, i.e. SET NX EX) and every request increments it (`incr`, Redis INCR): the count is exact
    whatever the number of processes. The window starts at the user's first request, so at most
    `num_requests` are accepted in any window of `duration` seconds that starts with an accepted one.

    On Redis the three steps go in one MULTI/EXEC round trip (atomic, so the counter always carries its
    TTL); other cache backends (tests use the local-memory one) take the generic path.
    """

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        self.now = self.timer()
        try:
            count = self._increment()
        except Exception as exc:  # the cache backend raised: count nothing, let the request through
            logger.warning(
                "throttle %s: cache unavailable (%s); allowing the request", self.scope, type(exc).__name__
            )
            return True
        return count <= self.num_requests

    def _increment(self) -> int:
        counter, started = self.key + ":count", self.key + ":started"
        client = _redis_client()
        if client is not None:
            pipe = client.pipeline(transaction=True)
            pipe.set(self.cache.make_and_validate_key(started), repr(self.now), nx=True, ex=self.duration)
            pipe.set(self.cache.make_and_validate_key(counter), 0, nx=True, ex=self.duration)
            pipe.incr(self.cache.make_and_validate_key(counter))
            return int(pipe.execute()[-1])
        for _ in range(2):
            self.cache.add(started, self.now, self.duration)
            self.cache.add(counter, 0, self.duration)
            try:
                return self.cache.incr(counter)
            except ValueError:  # the window expired between add() and incr(): start the next one
                continue
        raise RuntimeError("the throttle counter keeps expiring")

    def wait(self) -> float | None:
        """Seconds until the current window ends (the Retry-After of a 429)."""
        try:
            client = _redis_client()
            if client is not None:
                raw = client.get(self.cache.make_and_validate_key(self.key + ":started"))
                started = None if raw is None else float(raw)
            else:
                started = self.cache.get(self.key + ":started")
        except Exception:
            started = None
        if started is None:
            return float(self.duration)
        # Clamped: a concurrent first request may have stamped the window a moment after our clock read.
        return min(float(self.duration), max(0.0, started + self.duration - self.now))


class JobCreateThrottle(FailOpenUserRateThrottle):
    scope = "job_create"


class BatchCreateThrottle(FailOpenUserRateThrottle):
    scope = "batch_create"
