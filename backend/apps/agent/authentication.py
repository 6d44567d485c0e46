"""Token authentication that remembers, for a few seconds, the tokens it has just checked.

DRF's `TokenAuthentication` reads the token and its user from the database on every request: a sixth of
the CPU of accepting a job (docs/benchmarks.md). Clients that submit or poll many jobs present the same
token again and again, so each API process keeps a successful check for `API_TOKEN_CACHE_SEC` seconds
(default 5; 0 turns the memory off). Only successes are remembered: a wrong or revoked token is checked
against the database every time. Deleting a token or saving its user (e.g. deactivating it) empties the
memory of the process that did it at once; other API processes notice within `API_TOKEN_CACHE_SEC`.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from core.caches import LRU

#: Tokens remembered per process at most (the oldest is forgotten first).
MAX_TOKENS = 10_000

#: sha256 of a key -> (user, token) for API_TOKEN_CACHE_SEC: the least recently used is forgotten first.
_checked = LRU(MAX_TOKENS)


def forget_all(**kwargs: Any) -> None:
    """Empty this process's memory of checked tokens."""
    _checked.clear()


class CachedTokenAuthentication(TokenAuthentication):
    """`Authorization: Token <key>`, as DRF's, with a short per-process memory of successful checks."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        ttl = float(getattr(settings, "API_TOKEN_CACHE_SEC", 0))
        if ttl <= 0:
            return super().authenticate_credentials(key)
        digest = hashlib.sha256(key.encode()).hexdigest()  # keyed by digest: no key in a dict's keys
        entry = _checked.get(digest)
        if entry is not None:
            # A copy: a request may set attributes on its user; other threads hold the same entry.
            return copy.copy(entry[0]), entry[1]
        user, token = super().authenticate_credentials(key)  # raises AuthenticationFailed
        _checked.put(digest, (copy.copy(user), token), ttl=ttl)
        return user, token


post_delete.connect(forget_all, sender=Token, dispatch_uid="librarian-token-deleted")
post_save.connect(forget_all, sender=get_user_model(), dispatch_uid="librarian-user-saved")
