"""Signing secrets: create or rotate a user's secret, the secrets that sign now, the signature header."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from standardwebhooks import Webhook

from apps.webhooks.crypto import display_prefix, secret_decrypt, secret_encrypt, secret_generate
from apps.webhooks.models import WebhookSecret


def secret_create_or_rotate(*, user) -> tuple[str, WebhookSecret]:
    """Create the user's signing secret, or rotate it. Returns (plaintext, row); show the plaintext once.

    On rotation the current secret becomes the previous one and keeps signing (a second signature) for
    WEBHOOK_SECRET_GRACE_SEC. Rotating again within the grace period drops the oldest secret.
    """
    plaintext = secret_generate()
    now = timezone.now()
    with transaction.atomic():
        row = WebhookSecret.objects.select_for_update().filter(user=user).first()
        if row is None:
            row = WebhookSecret.objects.create(
                user=user, secret_encrypted=secret_encrypt(plaintext), prefix=display_prefix(plaintext)
            )
            return plaintext, row
        row.previous_secret_encrypted = row.secret_encrypted
        row.previous_prefix = row.prefix
        row.previous_valid_until = now + timedelta(seconds=settings.WEBHOOK_SECRET_GRACE_SEC)
        row.secret_encrypted = secret_encrypt(plaintext)
        row.prefix = display_prefix(plaintext)
        row.rotated_at = now
        row.save()
    return plaintext, row


def signing_secrets(*, user_id: int, now: datetime) -> list[str]:
    """The secrets that sign a delivery now: the current one, and the previous one during its grace.

    A user who never created a secret gets one here, so that every delivery is signed; they see it
    only by rotating (the previous one then keeps signing during the grace period). Raises
    `SecretUnreadable`.
    """
    row = WebhookSecret.objects.filter(user_id=user_id).first()
    if row is None:
        plaintext = secret_generate()
        row, _ = WebhookSecret.objects.get_or_create(
            user_id=user_id,
            defaults={"secret_encrypted": secret_encrypt(plaintext), "prefix": display_prefix(plaintext)},
        )
    keys = [secret_decrypt(row.secret_encrypted)]
    if row.previous_secret_encrypted and row.previous_valid_until and row.previous_valid_until > now:
        keys.append(secret_decrypt(row.previous_secret_encrypted))
    return keys


def sign(*, secrets: list[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """The `webhook-signature` header: one `v1,<sig>` per secret, space-separated (Standard Webhooks)."""
    return " ".join(Webhook(secret).sign(msg_id, timestamp, body) for secret in secrets)
