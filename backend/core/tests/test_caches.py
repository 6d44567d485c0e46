"""core.caches.LRU: the one process-local cache."""

from core.caches import LRU


def test_the_least_recently_used_goes_first():
    cache = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)

    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, None, 3, 2)


def test_size_zero_keeps_nothing_and_clear_forgets():
    off = LRU(0)
    off.put("a", 1)
    cache = LRU(3)
    cache.put("a", 1)
    cache.clear()

    assert (off.get("a"), len(off), cache.get("a"), len(cache)) == (None, 0, None, 0)
