"""Encryption keys derived from the project's secrets (SECRET_KEY and friends), in one way.

A Fernet key is sha256("librarian-<purpose>:" + secret), so each purpose (webhook secrets at rest, the
BYO-key hand-off) gets its own key from the same secret, and one leaked derived key opens nothing else.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

from cryptography.fernet import Fernet, MultiFernet


def derived_fernet(purpose: str, secrets: Sequence[str]) -> MultiFernet:
    """A Fernet that encrypts with the key derived from `secrets[0]` and decrypts with any of them
    (so rotating a secret keeps older tokens readable while its predecessor is still listed)."""
    unique = [secret for secret in dict.fromkeys(secrets) if secret]
    if not unique:
        raise ValueError("derived_fernet needs at least one non-empty secret")
    return MultiFernet([Fernet(_derive(purpose, secret)) for secret in unique])


def _derive(purpose: str, secret: str) -> bytes:
    return base64.urlsafe_b64encode(hashlib.sha256(f"librarian-{purpose}:{secret}".encode()).digest())
