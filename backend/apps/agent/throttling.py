"""Per-user throttles on job and batch creation, counted in the shared cache (Redis) across processes.

They key on the authenticated user only (never on X-Forwarded-For or other client-set headers), and fail
open when the cache is unreachable: the job row is durable, and refusing work because a rate counter is
down would turn a cache outage into an API outage.
"""

from __future__ import annotations

import logging

from rest_framework.throttling import UserRateThrottle

logger = logging.getLogger(__name__)


class FailOpenUserRateThrottle(UserRateThrottle):
    def allow_request(self, request, view) -> bool:
        try:
            return super().allow_request(request, view)
        except Exception as exc:  # the cache backend raised: count nothing, let the request through
            logger.warning(
                "throttle %s: cache unavailable (%s); allowing the request", self.scope, type(exc).__name__
            )
            return True


class JobCreateThrottle(FailOpenUserRateThrottle):
    scope = "job_create"


class BatchCreateThrottle(FailOpenUserRateThrottle):
    scope = "batch_create"
