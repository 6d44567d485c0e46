"""Secret scrubbing: no key or bearer token survives into an error message or a log line."""

from __future__ import annotations

import re

_SECRET_PATTERNS = (re.compile(r"(?i)bearer\s+\S+"), re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"))


def scrub_secrets(text: str, *secrets: str | None) -> str:
    """Remove `secrets` and anything that looks like a bearer token or an OpenAI key from `text`, and NUL
    characters (a provider's message is stored in the trace; PostgreSQL cannot store NUL in text)."""
    text = text.replace("\x00", "")
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("[REDACTED]", text)
    return text
