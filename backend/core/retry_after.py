"""`Retry-After`: how long a server asks us to wait, read once for every outbound client.

Used by the LLM client (`agent/llm_factory/openai_client.py`) and the webhook sender
(`apps/webhooks/services/http_attempt.py`); each applies its own cap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any


def retry_after_seconds(headers: Mapping[str, Any] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI-compatible servers) or `Retry-After` (delta-seconds
    or an HTTP-date; a date without zone is UTC), never negative; None when absent or unreadable.

    `headers` is any case-insensitive mapping (httpx headers); `now` (epoch seconds) defaults to the clock.
    """
    headers = headers or {}
    try:
        if headers.get("retry-after-ms") is not None:
            seconds = float(headers["retry-after-ms"]) / 1000
        else:
            value = headers.get("retry-after")
            if value is None or not str(value).strip():
                return None
            seconds = _seconds(str(value).strip(), time.time() if now is None else now)
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _seconds(value: str, now: float) -> float:
    try:
        return float(value)
    except ValueError:
        when = parsedate_to_datetime(value)  # raises ValueError / TypeError when it is no date either
    if when.tzinfo is None:  # "-0000": a date whose zone is unknown; HTTP dates are UTC
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - now
