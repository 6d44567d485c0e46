"""Timestamps as the API and the webhook payloads write them."""

from __future__ import annotations

from datetime import datetime


def iso_z(value: datetime | None) -> str | None:
    """ISO 8601 with "Z" for UTC (`2026-01-01T12:00:00Z`), or None."""
    return value.isoformat().replace("+00:00", "Z") if value else None
