"""Generate webhook secrets and keep them encrypted at rest.

A webhook secret must be readable by the worker (it is the HMAC key), so it cannot be hashed like a
password; it is encrypted with Fernet under a key derived from WEBHOOK_SECRETS_ENCRYPTION_KEY (default:
SECRET_KEY). SECRET_KEY_FALLBACKS still decrypt, so rotating SECRET_KEY the Django way keeps secrets usable.
"""

from __future__ import annotations

import base64
import secrets

from cryptography.fernet import InvalidToken, MultiFernet
from django.conf import settings

from core.keys import derived_fernet

SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
# 32 random bytes: the HMAC-SHA256 block of entropy; Standard Webhooks accepts 24 to 64.
SECRET_BYTES = 32
# "whsec_" and 4 characters: enough to tell two secrets apart, far too little to guess one.
DISPLAY_PREFIX_CHARS = len(SECRET_PREFIX) + 4


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted with the configured keys (the key changed without fallback)."""


def secret_generate() -> str:
    """A new `whsec_<base64>` secret, as `standardwebhooks.Webhook` expects it."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def display_prefix(secret: str) -> str:
    """The recognisable start of a secret, e.g. "whsec_ab12"."""
    return secret[:DISPLAY_PREFIX_CHARS]


def _fernet() -> MultiFernet:
    primary = settings.WEBHOOK_SECRETS_ENCRYPTION_KEY or settings.SECRET_KEY
    return derived_fernet(
        "webhook-secret", [primary, settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    )


def secret_encrypt(plaintext: str) -> str:
    """The Fernet token of `plaintext`, as text for a TextField."""
    return _fernet().encrypt(plaintext.encode()).decode("ascii")


def secret_decrypt(token: str) -> str:
    """The plaintext of a token made by `secret_encrypt`. Raises `SecretUnreadable`."""
    try:
        return _fernet().decrypt(token.encode("ascii")).decode()
    except (InvalidToken, ValueError):
        raise SecretUnreadable(
            "The stored webhook secret cannot be decrypted with the configured keys."
        ) from None
