"""The retry policy of an LLM call: which wait before the next attempt, within the job's deadline."""

from __future__ import annotations

import random
import time

#: Backoff between retries when the provider gives no Retry-After: 0.25 s, 0.5 s, 1 s ... (with jitter).
BACKOFF_BASE_SEC = 0.25
BACKOFF_MAX_SEC = 4.0
#: A retry that would get less time than this is not worth an upstream call.
MIN_ATTEMPT_SEC = 0.05


def retry_wait(
    *, attempts: int, max_retries: int, retry_after: float | None, cap_sec: float, end: float | None
) -> float | None:
    """Seconds to wait before retrying a retryable failure after `attempts` attempts, or None to stop.

    Honours `retry_after` (the provider's Retry-After) up to `cap_sec` (waiting less than asked would
    only buy another 429); otherwise exponential backoff with jitter. None when the retry budget
    (`max_retries`) is spent or the wait would leave less than `MIN_ATTEMPT_SEC` before `end`.
    """
    if attempts > max_retries:
        return None
    if retry_after is not None:
        if retry_after > cap_sec:
            return None
        wait = retry_after
    else:
        wait = min(BACKOFF_MAX_SEC, BACKOFF_BASE_SEC * 2 ** (attempts - 1)) * (0.5 + random.random() / 2)
        wait = min(wait, cap_sec)
    if end is not None and time.monotonic() + wait > end - MIN_ATTEMPT_SEC:
        return None
    return wait
