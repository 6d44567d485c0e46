"""The process-local cache of the project: a thread-safe LRU over `cachetools.LRUCache`.

Used for query embeddings and retrieval results (`agent/`), the LLM clients (`agent/llm_factory/`), and
with an expiry (`ttl`) for the API's checked tokens (`apps/agent/authentication.py`) and its answers for
finished jobs (`apps/agent/apis/jobs.py`). Values are shared between callers: nobody may modify one after
`put` (the embedder stores its vectors read-only).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from typing import Any

from cachetools import LRUCache


class LRU:
    """At most `size` entries, the least recently used dropped first; `size <= 0` keeps nothing."""

    def __init__(self, size: int):
        self._size = size
        self._data: LRUCache[Hashable, Any] = LRUCache(maxsize=max(size, 1))
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        """The value of `key` (now the most recently used), or None, also once its `ttl` has passed."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            value, expires = entry
            if expires is not None and expires <= time.monotonic():
                del self._data[key]
                return None
            return value

    def put(self, key: Hashable, value: Any, *, ttl: float | None = None) -> None:
        """Keep `value` under `key`; with `ttl`, for that many seconds at most."""
        if self._size <= 0:
            return
        expires = None if ttl is None else time.monotonic() + ttl
        with self._lock:
            self._data[key] = (value, expires)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
