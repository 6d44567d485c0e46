"""Hand a bring-your-own LLM key from the API process to the worker without it resting anywhere readable.

The key is encrypted (Fernet, with a key derived from SECRET_KEY) and held in the shared cache (Redis)
under the job id with a short TTL; the worker reads it when it runs the job and it is deleted when the
job ends. It is never a task argument (Flower and the broker show those) and never a database column.
"""

from __future__ import annotations

import contextlib
import uuid

from cryptography.fernet import InvalidToken, MultiFernet
from django.conf import settings
from django.core.cache import cache

from core.keys import derived_fernet

_PREFIX = "agent:byo-key:"


class KeyVaultUnavailable(Exception):
    """The shared cache could not store or read the key."""


def _fernet() -> MultiFernet:
    return derived_fernet("byo-key-vault", [settings.SECRET_KEY])


def key_put(*, job_id: uuid.UUID, api_key: str) -> None:
    """Store `api_key` for `job_id` for `BYO_KEY_TTL_SEC`. Raises `KeyVaultUnavailable`."""
    token = _fernet().encrypt(api_key.encode())
    try:
        cache.set(_PREFIX + str(job_id), token, timeout=settings.BYO_KEY_TTL_SEC)
    except Exception as exc:  # any cache/redis failure means we cannot accept the job
        raise KeyVaultUnavailable(type(exc).__name__) from None


def key_get(*, job_id: uuid.UUID) -> str | None:
    """The key stored for `job_id`, or None when it expired, was deleted or cannot be decrypted."""
    try:
        token = cache.get(_PREFIX + str(job_id))
    except Exception as exc:
        raise KeyVaultUnavailable(type(exc).__name__) from None
    if token is None:
        return None
    try:
        return _fernet().decrypt(token).decode()
    except InvalidToken:
        return None


def key_delete(*, job_id: uuid.UUID) -> None:
    """Forget the key for `job_id`. Best effort: the TTL removes it anyway."""
    with contextlib.suppress(Exception):  # the TTL is the safety net
        cache.delete(_PREFIX + str(job_id))
