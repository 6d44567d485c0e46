"""The provider's rate limit, shared by every process that calls it: requests and tokens per minute
(`LLM_RATE_RPM`, `LLM_RATE_TPM`) per provider base URL and key, and a shared "pause until" that a 429 with
`Retry-After` sets for everyone.

The algorithm is throttled-py's GCRA (generic cell rate algorithm): one Lua script per check in Redis, timed
by Redis's own clock, so every worker process agrees on one schedule. Requests are spaced evenly (one per
60/RPM seconds, with a tolerance of one interval: `RPM_BURST`), never a minute's worth at once, which is
also how providers enforce "600 RPM" (about 10 per second). Tokens are weighed per request: the prompt's estimate plus `max_tokens`, what
the provider counts against TPM when the request arrives. The limiter runs at 95% of the configured
figures (`HEADROOM`), so that the provider's own bucket stays full and absorbs jitter.

A caller waits for its slot (`acquire`) within its deadline; the threads of one process queue on a local
lock per bucket, so only one of them asks Redis at a time (no herd of sleepers waking at each slot). A
bucket is named by a hash of the base URL and the key: a user's own key (BYO) has its own bucket, and no
key is ever stored. When Redis is unreachable the limiter lets the call through (fails open) and says so
in the log: the provider's own 429 handling still applies.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from datetime import timedelta
from typing import Any, Protocol

from throttled.rate_limiter import GCRARateLimiter, per_duration

logger = logging.getLogger(__name__)

KEY_PREFIX = "librarian:llm-rate"
#: Requests the limiter lets through at once: 2 is a tolerance of one interval, so a caller that arrives a
#: little late (a Redis round trip, a thread switch) does not push every later slot back by as much.
RPM_BURST = 2
#: The share of LLM_RATE_RPM / LLM_RATE_TPM the limiter uses. At exactly the provider's rate, the provider's
#: own bucket refills only as fast as we drain it, so every bit of jitter between our slot and the request's
#: arrival (a descheduled thread, a slow connect) eats into its burst for good, until it answers 429. At 95%
#: it refills faster than we drain it and stays near full: jitter is absorbed (measured in
#: docs/benchmarks.md, "Rate limit").
HEADROOM = 0.95
#: The limits are written as 19 per 20 minutes per unit of the per-minute figure: exactly 95% (throttled-py
#: takes whole numbers of requests per whole seconds).
_PERIOD = timedelta(minutes=20)
_PER_PERIOD = 19
#: A pause longer than this (a provider asking for minutes) is capped: the job deadline bounds waits anyway.
MAX_PAUSE_SEC = 600.0


class RateLimiter(Protocol):
    """What `OpenAICompatibleLLM` asks before each attempt and tells after a 429."""

    def acquire(self, bucket: str, *, tokens: int, end: float | None) -> bool:
        """Wait for a slot of one request weighing `tokens`; False when `end` (monotonic) would pass first."""
        ...

    def pause(self, bucket: str, seconds: float) -> None:
        """Hold every caller of `bucket` for `seconds` (the provider's Retry-After)."""
        ...


def bucket_id(base_url: str, api_key: str) -> str:
    """The bucket of one provider base URL and key: a hash, so the key is never stored or logged."""
    return hashlib.sha256(f"{base_url}\n{api_key}".encode()).hexdigest()[:32]


class ProviderRateLimiter:
    """RPM and TPM limits (either may be None: unlimited) kept in `store` (throttled-py's RedisStore, or
    its MemoryStore for a single process)."""

    def __init__(self, *, rpm: int | None, tpm: int | None, store: Any):
        self.rpm, self.tpm = rpm, tpm
        self._store = store
        self._requests = (
            GCRARateLimiter(
                per_duration(_PERIOD, rpm * _PER_PERIOD, burst=RPM_BURST),
                store,
                key_prefix=f"{KEY_PREFIX}:rpm",
            )
            if rpm
            else None
        )
        # A token bucket holds one second's worth; a request heavier than that takes it in several pieces.
        self._token_burst = max(1, tpm // 60) if tpm else 0
        self._tokens = (
            GCRARateLimiter(
                per_duration(_PERIOD, tpm * _PER_PERIOD, burst=self._token_burst),
                store,
                key_prefix=f"{KEY_PREFIX}:tpm",
            )
            if tpm
            else None
        )
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def __repr__(self) -> str:
        return f"ProviderRateLimiter(rpm={self.rpm}, tpm={self.tpm})"

    def acquire(self, bucket: str, *, tokens: int, end: float | None) -> bool:
        lock = self._lock(bucket)
        if not lock.acquire(timeout=-1 if end is None else max(0.0, end - time.monotonic())):
            return False
        try:
            return self._acquire_locked(bucket, max(0, int(tokens)), end)
        finally:
            lock.release()

    def pause(self, bucket: str, seconds: float) -> None:
        seconds = min(float(seconds), MAX_PAUSE_SEC)
        if not seconds > 0:
            return
        until = time.time() + seconds
        try:
            if until > self._paused_until(bucket):
                self._store.set(self._pause_key(bucket), until, math.ceil(seconds))
        except Exception as exc:  # the store is down: this process still honours Retry-After itself
            logger.warning("llm rate limit: could not record a pause (%s)", type(exc).__name__)

    # -- internals --

    def _acquire_locked(self, bucket: str, tokens: int, end: float | None) -> bool:
        tokens_left = tokens if self._tokens is not None else 0
        while True:
            try:
                wait = self._paused_until(bucket) - time.time()
                if wait <= 0 and tokens_left > 0:
                    piece = min(tokens_left, self._token_burst)
                    result = self._tokens.limit(bucket, cost=piece)  # type: ignore[union-attr]
                    wait = result.state.retry_after if result.limited else 0.0
                    if not result.limited:
                        tokens_left -= piece
                        continue
                if wait <= 0 and self._requests is not None:
                    # Last, so that the request leaves right after its slot: the spacing the provider sees.
                    result = self._requests.limit(bucket, cost=1)
                    wait = result.state.retry_after if result.limited else 0.0
                if wait <= 0:
                    return True
            except Exception as exc:  # Redis down: fail open, the provider's 429 handling still applies
                logger.warning("llm rate limit unavailable (%s); calling without it", type(exc).__name__)
                return True
            if end is not None and time.monotonic() + wait > end:
                return False
            time.sleep(wait)

    def _paused_until(self, bucket: str) -> float:
        value = self._store.get(self._pause_key(bucket))
        return float(value) if value is not None else 0.0

    def _pause_key(self, bucket: str) -> str:
        return f"{KEY_PREFIX}:pause:{bucket}"

    def _lock(self, bucket: str) -> threading.Lock:
        lock = self._locks.get(bucket)
        if lock is None:
            with self._locks_guard:
                lock = self._locks.setdefault(bucket, threading.Lock())
        return lock
