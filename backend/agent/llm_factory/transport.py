"""HTTP clients for the OpenAI-compatible client: a deadline-bounded transport and the process-wide cache.

One set of connection pools per base URL (split into shards), one light `openai` client per key hash;
a forked worker starts with an empty cache.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import itertools
import math
import os
import threading
import time
from types import ModuleType
from typing import Any

from cachetools import LRUCache

#: Clients kept per process (per event loop for async); each user key and pool shard is one entry.
CLIENT_CACHE_SIZE = 256
#: Connections per HTTP pool shard (see `_ClientSet`); LLM_HTTP_POOL_SIZE is split into such shards.
POOL_SHARD_SIZE = 50


@functools.cache
def http_module() -> ModuleType:
    """The HTTP library of the installed `openai`: httpx2 for openai>=3, httpx before."""
    try:
        return importlib.import_module("httpx2")
    except ImportError:
        return importlib.import_module("httpx")


@functools.cache
def _deadline_transport_class() -> type:
    """A transport that bounds each request's total time by its read timeout.

    httpx timeouts apply per read, so a server that drips one byte at a time never times out. The sync
    client has no task to cancel, so the response stream checks the clock between chunks instead.
    """
    http = http_module()

    class DeadlineStream(http.SyncByteStream):
        def __init__(self, inner: Any, request: Any, end: float):
            self._inner, self._request, self._end = inner, request, end

        def __iter__(self):
            for chunk in self._inner:
                if time.monotonic() > self._end:
                    raise http.ReadTimeout(
                        "The response took longer than its timeout.", request=self._request
                    )
                yield chunk

        def close(self) -> None:
            self._inner.close()

    class DeadlineTransport(http.BaseTransport):
        def __init__(self, inner: Any):
            self._inner = inner

        def handle_request(self, request: Any) -> Any:
            started = time.monotonic()
            timeouts = request.extensions.get("timeout") or {}
            budget = timeouts.get("read")
            response = self._inner.handle_request(request)
            if budget is None:
                return response
            end = started + budget
            # Headers that came late leave less time for the body: httpcore reads the body's read
            # timeout from these extensions when the body is first read, i.e. after this point.
            request.extensions["timeout"] = {**timeouts, "read": max(end - time.monotonic(), 0.001)}
            return http.Response(
                status_code=response.status_code,
                headers=response.headers,
                stream=DeadlineStream(response.stream, request, end),
                extensions=response.extensions,
            )

        def close(self) -> None:
            self._inner.close()

    return DeadlineTransport


def _limits(pool_size: int) -> Any:
    return http_module().Limits(max_connections=pool_size, max_keepalive_connections=pool_size)


def _new_sync_http(pool_size: int) -> Any:
    http = http_module()
    transport = _deadline_transport_class()(http.HTTPTransport(limits=_limits(pool_size)))
    return http.Client(transport=transport)


def _new_async_http(pool_size: int) -> Any:
    return http_module().AsyncClient(limits=_limits(pool_size))


def new_sync_client(openai: ModuleType, base_url: str, api_key: str, pool_size: int, http: Any = None) -> Any:
    # max_retries=0: retries are done (and budgeted) by OpenAICompatibleLLM, not stacked on the SDK's.
    return openai.OpenAI(
        base_url=base_url, api_key=api_key, max_retries=0, http_client=http or _new_sync_http(pool_size)
    )


def new_async_client(
    openai: ModuleType, base_url: str, api_key: str, pool_size: int, http: Any = None
) -> Any:
    return openai.AsyncOpenAI(
        base_url=base_url, api_key=api_key, max_retries=0, http_client=http or _new_async_http(pool_size)
    )


class _ClientSet:
    """The clients of the process (sync) or of one event loop (async).

    One set of HTTP connection pools per base URL, shared by every key, and one light `openai` client per
    (base URL, key hash, shard). httpcore scans its whole pool for each request, which grows
    quadratically under load, so a pool of N connections is split into shards of at most
    `POOL_SHARD_SIZE`; successive callers take the shards in turn.
    """

    def __init__(self, new_http: Any, new_client: Any, maxsize: int):
        self._new_http, self._new_client = new_http, new_client
        self._http: dict[tuple[str, int, int], Any] = {}
        # Least recently used first out: dropped, not closed (another thread may be using it; the shared
        # pool stays open anyway). Callers hold the _ClientCache lock.
        self._clients: LRUCache[tuple[str, str, int], Any] = LRUCache(maxsize=maxsize)
        self._turn = itertools.count()

    def get(self, openai: ModuleType, base_url: str, api_key: str, pool_size: int) -> Any:
        shards = math.ceil(pool_size / POOL_SHARD_SIZE)
        shard = next(self._turn) % shards
        key = (base_url, _key_hash(api_key), shard)
        client = self._clients.get(key)
        if client is None:
            http = self._http.get((base_url, pool_size, shard))
            if http is None:
                http = self._http[(base_url, pool_size, shard)] = self._new_http(
                    math.ceil(pool_size / shards)
                )
            client = self._clients[key] = self._new_client(openai, base_url, api_key, pool_size, http)
        return client


class _ClientCache:
    """Process-wide clients so thousands of jobs share connections instead of opening one each.

    Keys are cached by their sha256 only. Async clients are bound to an event loop, so each loop gets its
    own set; the sets of closed loops are dropped on the next lookup.
    """

    def __init__(self, maxsize: int = CLIENT_CACHE_SIZE):
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self._sync = _ClientSet(_new_sync_http, new_sync_client, self._maxsize)
        # id(loop) -> (loop, clients). Not a WeakKeyDictionary: the clients refer to their loop, so its
        # entries would never die.
        self._per_loop: dict[int, tuple[Any, _ClientSet]] = {}

    def sync_client(self, openai: ModuleType, base_url: str, api_key: str, pool_size: int) -> Any:
        with self._lock:
            return self._sync.get(openai, base_url, api_key, pool_size)

    def async_client(self, openai: ModuleType, base_url: str, api_key: str, pool_size: int) -> Any:
        loop = asyncio.get_running_loop()
        with self._lock:
            for loop_id in [i for i, (other, _) in self._per_loop.items() if other.is_closed()]:
                del self._per_loop[loop_id]
            entry = self._per_loop.get(id(loop))
            if entry is None:
                entry = self._per_loop[id(loop)] = (
                    loop,
                    _ClientSet(_new_async_http, new_async_client, self._maxsize),
                )
            return entry[1].get(openai, base_url, api_key, pool_size)


def _key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


CLIENTS = _ClientCache()

# A forked worker (Celery prefork) must not share its parent's sockets: start with an empty cache.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=CLIENTS.reset)
