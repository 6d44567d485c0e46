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


def test_an_entry_put_with_a_ttl_is_gone_once_it_has_passed(monkeypatch):
    from core import caches

    now = [100.0]
    monkeypatch.setattr(caches.time, "monotonic", lambda: now[0])
    cache = LRU(3)
    cache.put("brief", 1, ttl=5)
    cache.put("kept", 2)

    now[0] = 104.9
    assert (cache.get("brief"), cache.get("kept")) == (1, 2)
    now[0] = 105.0
    assert (cache.get("brief"), cache.get("kept"), len(cache)) == (None, 2, 1)
