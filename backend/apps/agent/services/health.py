"""Health of the parts the API needs to accept and run jobs. Read-only; every probe has a short timeout."""

from __future__ import annotations

from typing import Any

import redis
from celery import current_app
from django.conf import settings
from django.db import connection

from agent.cost_policy import resolve_cost_decision
from apps.agent.services.retrieval import store_health


def _database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"ok": True, "vendor": connection.vendor}


def _broker() -> dict[str, Any]:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    finally:
        client.close()
    return {"ok": True}


def _workers() -> dict[str, Any]:
    replies = current_app.control.ping(timeout=settings.HEALTH_WORKER_TIMEOUT_SEC) or []
    names = sorted(name for reply in replies for name in reply)
    if not names:
        return {"ok": False, "error": "no worker answered a ping"}
    return {"ok": True, "workers": names}


def _llm() -> dict[str, Any]:
    llm = settings.LLM
    info: dict[str, Any] = {
        "provider": llm.provider,
        "model": llm.model,
        "cost_mode": str(llm.cost_mode.value),
    }
    if llm.cost_mode.value == "byo_key":
        info.update(ok=True, effective="per request (X-LLM-API-Key required)")
        return info
    decision = resolve_cost_decision(None, llm)
    info.update(ok=True, effective=decision.provider, key_source=decision.key_source)
    return info


CHECKS = {
    "database": _database,
    "broker": _broker,
    "workers": _workers,
    "vector_store": store_health,
    "llm": _llm,
}
#: Every part is required for a green check: a missing vector store still answers (degraded), but an
#: operator must see it, and load balancers should prefer a healthy replica.
REQUIRED = tuple(CHECKS)


def health_check() -> tuple[bool, dict[str, Any]]:
    """Run every probe. Returns (ready, report); `ready` is False when a required part fails."""
    checks: dict[str, Any] = {}
    for name, probe in CHECKS.items():
        try:
            checks[name] = probe()
        except Exception as exc:  # a probe failing is the information we report
            checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    failing = [name for name, result in checks.items() if not result.get("ok")]
    ready = not any(name in REQUIRED for name in failing)
    return ready, {"status": "ok" if ready else "unavailable", "failing": failing, "checks": checks}
