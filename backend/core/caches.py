"""The process-local cache of the project: a thread-safe LRU over `cachetools.LRUCache`.

Used for query embeddings and retrieval results (`agent/`), the LLM clients (`agent/llm_factory/`) and
the API's checked tokens (`apps/agent/authentication.py`). Values are shared between callers: nobody may
modify one after `put` (the embedder stores its vectors read-only).
"""

from __future__ import annotations

import threading
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
        """The value of `key` (now the most recently used), or None."""
        with self._lock:
            return self._data.get(key)

    def put(self, key: Hashable, value: Any) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._data[key] = value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
