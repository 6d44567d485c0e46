"""Spend recorded durably: what calls paid with the server's key cost, read back from the database.

Two kinds of rows carry it: a job's own row (`AgentJob.cost_usd`, written when it ends) and a
`SyncCall` row per synchronous call (POST /api/agent/), which has no job. Budget counters that Redis lacks
are rebuilt from both (services/budgets.py), and usage and the admin's spend list read both, through the
functions here, so that no reader can forget one. A row counts in the period of its `finished_at`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count, DecimalField, IntegerField, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from agent.cost_policy import CostDecision
from agent.types import AgentResult
from apps.agent.models import AgentJob, SyncCall


def usd_amount(value: float) -> Decimal:
    """A USD amount as the cost columns keep it (6 decimals)."""
    return Decimal(str(round(value, 6)))


def sync_call_record(*, owner_id: Any, decision: CostDecision, result: AgentResult) -> SyncCall | None:
    """Record what a synchronous call cost, when it was paid with the server's key and cost something.

    Returns the row, or None (a user's own key, the stub, or a call that was not made or not charged).
    """
    if decision.key_source != "server" or result.cost_usd <= 0:
        return None
    return SyncCall.objects.create(
        owner_id=owner_id,
        finished_at=timezone.now(),
        provider=decision.provider,
        model=decision.model,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        cost_usd=usd_amount(result.cost_usd),
    )


def _paid_jobs(start: datetime, end: datetime | None = None) -> QuerySet:
    rows = AgentJob.objects.filter(key_source="server", finished_at__gte=start, cost_usd__gt=0)
    return rows if end is None else rows.filter(finished_at__lt=end)


def _sync_calls(start: datetime, end: datetime | None = None) -> QuerySet:
    rows = SyncCall.objects.filter(finished_at__gte=start, cost_usd__gt=0)
    return rows if end is None else rows.filter(finished_at__lt=end)


def spend_by_model(*, start: datetime, end: datetime, owner_id: Any = None) -> dict[str, tuple[Decimal, int]]:
    """USD spent with the server's key and paid calls, per model, finished in [start, end): of `owner_id`,
    or of everyone when it is None."""
    totals: dict[str, tuple[Decimal, int]] = {}
    for rows in (_paid_jobs(start, end), _sync_calls(start, end)):
        if owner_id is not None:
            rows = rows.filter(owner_id=owner_id)
        for row in rows.order_by().values("model").annotate(spent=Sum("cost_usd"), calls=Count("id")):
            spent, calls = totals.get(row["model"], (Decimal(0), 0))
            totals[row["model"]] = (spent + row["spent"], calls + row["calls"])
    return totals


def _per_owner(rows: QuerySet, value: Any, output_field: Any) -> Coalesce:
    by_owner = rows.filter(owner_id=OuterRef("pk")).order_by().values("owner_id")
    subquery = Subquery(by_owner.annotate(total=value).values("total"), output_field=output_field)
    zero = Decimal(0) if isinstance(output_field, DecimalField) else 0
    return Coalesce(subquery, Value(zero), output_field=output_field)


def spend_by_user_annotate(users: QuerySet, *, day_start: datetime, month_start: datetime) -> QuerySet:
    """`users` annotated with `day_usd`, `month_usd` (server-key spend since each start) and `month_calls`,
    jobs and synchronous calls together (one subquery each: two reverse relations in one aggregate would
    multiply each other's rows)."""
    usd = DecimalField(max_digits=14, decimal_places=6)
    calls = IntegerField()
    return users.annotate(
        day_usd=_per_owner(_paid_jobs(day_start), Sum("cost_usd"), usd)
        + _per_owner(_sync_calls(day_start), Sum("cost_usd"), usd),
        month_usd=_per_owner(_paid_jobs(month_start), Sum("cost_usd"), usd)
        + _per_owner(_sync_calls(month_start), Sum("cost_usd"), usd),
        month_calls=_per_owner(_paid_jobs(month_start), Count("id"), calls)
        + _per_owner(_sync_calls(month_start), Count("id"), calls),
    )
