"""The process-wide redis-py client of the shared cache (Redis): throttles, fair-share locks.

Django's Redis cache builds a new `Redis` object for every call (a fifth of a millisecond each); callers
that run on every request or job keep one client per process instead (thread-safe, pooled connections).
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings

_REDIS_CACHE = "django.core.cache.backends.redis.RedisCache"
_clients: dict[tuple[str, str], Any] = {}
_clients_lock = threading.Lock()


def cache_location(alias: str = "default") -> str | None:
    """The Redis URL of the cache `alias` when it is Django's RedisCache, else None (e.g. local memory)."""
    config = settings.CACHES.get(alias) or {}
    if config.get("BACKEND") != _REDIS_CACHE:
        return None
    location = config.get("LOCATION")
    if isinstance(location, list | tuple):
        location = location[0]
    return str(location)


def redis_client(alias: str = "default") -> Any | None:
    """A process-wide redis-py client for the cache `alias` when it is Django's RedisCache, else None."""
    location = cache_location(alias)
    if location is None:
        return None
    key = (alias, location)
    client = _clients.get(key)
    if client is None:
        import redis

        config = settings.CACHES.get(alias) or {}
        options = {k: v for k, v in (config.get("OPTIONS") or {}).items() if k.startswith("socket_")}
        with _clients_lock:
            client = _clients.setdefault(key, redis.Redis.from_url(location, **options))
    return client
