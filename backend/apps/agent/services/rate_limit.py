"""The process's provider rate limiter (agent.rate_limit) from the settings, kept in the shared Redis.

`provider_limiter()` returns None when neither `LLM_RATE_RPM` nor `LLM_RATE_TPM` is set (unlimited), so the
LLM path costs nothing more then. Without a Redis cache (unit tests' local-memory cache) the limit is kept
in this process's memory: it then holds for one process only.
"""

from __future__ import annotations

import threading

from django.conf import settings
from throttled.store import MemoryStore, RedisStore

from agent.rate_limit import ProviderRateLimiter
from apps.agent.services.shared_cache import cache_location

_limiters: dict[tuple[int | None, int | None, str | None], ProviderRateLimiter] = {}
_lock = threading.Lock()


def provider_limiter() -> ProviderRateLimiter | None:
    """The limiter for `settings.LLM.rate_rpm` / `rate_tpm`, one per process (and per setting), or None."""
    rpm, tpm = settings.LLM.rate_rpm, settings.LLM.rate_tpm
    if not rpm and not tpm:
        return None
    location = cache_location()
    key = (rpm, tpm, location)
    limiter = _limiters.get(key)
    if limiter is None:
        with _lock:
            limiter = _limiters.get(key)
            if limiter is None:
                store = (
                    RedisStore(server=location, options={"SOCKET_TIMEOUT": 2, "SOCKET_CONNECT_TIMEOUT": 2})
                    if location
                    else MemoryStore()
                )
                limiter = _limiters[key] = ProviderRateLimiter(rpm=rpm, tpm=tpm, store=store)
    return limiter
