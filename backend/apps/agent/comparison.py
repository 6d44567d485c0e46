"""Batch arithmetic: progress, totals and the comparison of re-runs with the jobs they re-ran.

Plain functions over plain data (`JobFacts`), no ORM: `selectors.batch_view` loads the rows, these
functions compute, and the tests check the arithmetic on crafted inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class JobFacts:
    """What the comparison needs from one job (a re-run or its parent)."""

    id: str
    status: str
    degraded: bool
    result_ids: tuple[str, ...]
    latency_ms: float | None
    cost_usd: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    store_build: str | None = None
    query: str = ""


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between ranks; None for no values."""
    data = sorted(values)
    if not data:
        return None
    rank = (len(data) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return data[low] + (data[high] - data[low]) * (rank - low)


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """|A ∩ B| / |A ∪ B|; two empty result lists are identical (1.0)."""
    set_a, set_b = set(a), set(b)
    union = set_a | set_b
    return 1.0 if not union else len(set_a & set_b) / len(union)


def rank_changes(parent_ids: Sequence[str], ids: Sequence[str]) -> list[dict[str, Any]]:
    """Books present in both lists at a different rank (1-based), in the re-run's order."""
    parent_rank = {book_id: rank for rank, book_id in enumerate(parent_ids, start=1)}
    return [
        {"id": book_id, "parent_rank": parent_rank[book_id], "rank": rank}
        for rank, book_id in enumerate(ids, start=1)
        if book_id in parent_rank and parent_rank[book_id] != rank
    ]


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def progress(statuses: Iterable[str]) -> dict[str, Any]:
    """Counts by status, how many finished, and the finished share in percent."""
    counts = dict.fromkeys(STATUSES, 0)
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    total = sum(counts.values())
    finished = sum(counts[s] for s in FINISHED)
    return {
        "total": total,
        **counts,
        "finished": finished,
        "percent": round(100 * finished / total, 1) if total else 100.0,
    }


def totals(jobs: Sequence[JobFacts]) -> dict[str, Any]:
    """Tokens and cost summed over the jobs; latency percentiles over the jobs that recorded one."""
    latencies = [j.latency_ms for j in jobs if j.latency_ms is not None]
    prompt = sum(j.prompt_tokens for j in jobs)
    completion = sum(j.completion_tokens for j in jobs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_usd": round(sum(j.cost_usd for j in jobs), 6),
        "latency_ms": {
            "count": len(latencies),
            "p50": _round(percentile(latencies, 50), 1),
            "p95": _round(percentile(latencies, 95), 1),
            "max": _round(max(latencies), 1) if latencies else None,
        },
    }


def item_compare(*, parent: JobFacts, rerun: JobFacts) -> dict[str, Any]:
    """How a re-run differs from its parent.

    Results are compared only when both jobs succeeded (`compared`); otherwise the result fields are
    None, because a failed or cancelled job has no answer to compare. Degraded, latency and cost
    deltas are given whenever both sides have a value.
    """
    compared = parent.status == "succeeded" and rerun.status == "succeeded"
    if parent.degraded == rerun.degraded:
        degraded_change = "unchanged"
    else:
        degraded_change = "became_degraded" if rerun.degraded else "recovered"
    latency_delta = (
        rerun.latency_ms - parent.latency_ms
        if rerun.latency_ms is not None and parent.latency_ms is not None
        else None
    )
    parent_ids, ids = list(parent.result_ids), list(rerun.result_ids)
    out: dict[str, Any] = {
        "compared": compared,
        "parent_status": parent.status,
        "parent_result_ids": parent_ids,
        "jaccard": None,
        "results_changed": None,
        "order_changed": None,
        "added_ids": None,
        "removed_ids": None,
        "rank_changes": None,
        "parent_degraded": parent.degraded,
        "degraded_change": degraded_change if compared else None,
        "parent_latency_ms": _round(parent.latency_ms, 1),
        "latency_delta_ms": _round(latency_delta, 1),
        "parent_cost_usd": round(parent.cost_usd, 6),
        "cost_delta_usd": round(rerun.cost_usd - parent.cost_usd, 6),
        "parent_model": parent.model,
        # Unknown (None) when either job never ran on a store (cancelled while queued, failed first):
        # an item that never ran did not run "on another build".
        "store_changed": parent.store_build != rerun.store_build
        if parent.store_build and rerun.store_build
        else None,
    }
    if compared:
        same_set = set(parent_ids) == set(ids)
        out.update(
            jaccard=round(jaccard(parent_ids, ids), 4),
            results_changed=parent_ids != ids,
            order_changed=same_set and parent_ids != ids,
            added_ids=[i for i in ids if i not in set(parent_ids)],
            removed_ids=[i for i in parent_ids if i not in set(ids)],
            rank_changes=rank_changes(parent_ids, ids),
        )
    return out


def summary(pairs: Sequence[tuple[JobFacts, JobFacts, dict[str, Any]]]) -> dict[str, Any]:
    """The aggregate of `item_compare` results: (parent, rerun, comparison) triples."""
    compared = [(p, r, c) for p, r, c in pairs if c["compared"]]
    jaccards = [c["jaccard"] for _, _, c in compared]
    changes = [c["degraded_change"] for _, _, c in compared]
    parent_latency = [p.latency_ms for p, _, _ in compared if p.latency_ms is not None]
    rerun_latency = [r.latency_ms for _, r, _ in compared if r.latency_ms is not None]
    deltas = [c["latency_delta_ms"] for _, _, c in compared if c["latency_delta_ms"] is not None]
    parent_cost = sum(p.cost_usd for p, _, _ in compared)
    rerun_cost = sum(r.cost_usd for _, r, _ in compared)
    return {
        "items": len(pairs),
        "compared": len(compared),
        "not_compared": len(pairs) - len(compared),
        "identical": sum(1 for _, _, c in compared if not c["results_changed"]),
        "reordered": sum(1 for _, _, c in compared if c["order_changed"]),
        "changed": sum(1 for _, _, c in compared if c["results_changed"] and not c["order_changed"]),
        "mean_jaccard": round(sum(jaccards) / len(jaccards), 4) if jaccards else None,
        "min_jaccard": min(jaccards) if jaccards else None,
        "degraded": {
            "became_degraded": changes.count("became_degraded"),
            "recovered": changes.count("recovered"),
            "unchanged": changes.count("unchanged"),
        },
        "latency_ms": {
            "parent_p50": _round(percentile(parent_latency, 50), 1),
            "rerun_p50": _round(percentile(rerun_latency, 50), 1),
            "parent_p95": _round(percentile(parent_latency, 95), 1),
            "rerun_p95": _round(percentile(rerun_latency, 95), 1),
            "mean_delta": _round(sum(deltas) / len(deltas), 1) if deltas else None,
        },
        "cost_usd": {
            "parent_total": round(parent_cost, 6),
            "rerun_total": round(rerun_cost, 6),
            "delta": round(rerun_cost - parent_cost, 6),
        },
        "store_changed": sum(1 for _, _, c in pairs if c["store_changed"]),
    }
