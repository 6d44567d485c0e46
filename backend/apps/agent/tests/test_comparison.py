"""Batch arithmetic on crafted data: percentiles, Jaccard, rank changes, item comparison, summary."""

from __future__ import annotations

import pytest

from apps.agent import comparison
from apps.agent.comparison import JobFacts


def facts(
    ids, *, status="succeeded", degraded=False, latency=100.0, cost=0.001, build="b1", **kw
) -> JobFacts:
    return JobFacts(
        id=kw.pop("id", "j"),
        status=status,
        degraded=degraded,
        result_ids=tuple(ids),
        latency_ms=latency,
        cost_usd=cost,
        store_build=build,
        **kw,
    )


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, None),
        ([7.0], 95, 7.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([10.0, 20.0, 30.0, 40.0, 50.0], 95, 48.0),
        ([50.0, 10.0, 30.0], 50, 30.0),
    ],
)
def test_percentile_interpolates_between_ranks(values, q, expected):
    assert comparison.percentile(values, q) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([], [], 1.0),
        (["1"], [], 0.0),
        (["1", "2", "3"], ["3", "2", "1"], 1.0),
        (["1", "2"], ["2", "4"], 1 / 3),
        (["1", "2", "3", "4"], ["1", "2"], 0.5),
    ],
)
def test_jaccard(a, b, expected):
    assert comparison.jaccard(a, b) == pytest.approx(expected)


def test_rank_changes_lists_common_books_that_moved_in_rerun_order():
    assert comparison.rank_changes(["1", "2", "3", "9"], ["3", "1", "2", "7"]) == [
        {"id": "3", "parent_rank": 3, "rank": 1},
        {"id": "1", "parent_rank": 1, "rank": 2},
        {"id": "2", "parent_rank": 2, "rank": 3},
    ]
    assert comparison.rank_changes(["1", "2"], ["1", "2"]) == []


def test_item_compare_identical():
    out = comparison.item_compare(parent=facts(["1", "2"]), rerun=facts(["1", "2"]))
    assert out == {
        "compared": True,
        "parent_status": "succeeded",
        "parent_result_ids": ["1", "2"],
        "jaccard": 1.0,
        "results_changed": False,
        "order_changed": False,
        "added_ids": [],
        "removed_ids": [],
        "rank_changes": [],
        "parent_degraded": False,
        "degraded_change": "unchanged",
        "parent_latency_ms": 100.0,
        "latency_delta_ms": 0.0,
        "parent_cost_usd": 0.001,
        "cost_delta_usd": 0.0,
        "parent_model": "",
        "store_changed": False,
    }


def test_item_compare_changed_books_degraded_latency_cost_and_store():
    parent = facts(["1", "2"], latency=100.0, cost=0.001, build="old", model="m1")
    rerun = facts(["2", "4"], degraded=True, latency=250.5, cost=0.003, build="new", model="m2")
    out = comparison.item_compare(parent=parent, rerun=rerun)
    assert out["jaccard"] == 0.3333
    assert (out["results_changed"], out["order_changed"]) == (True, False)
    assert (out["added_ids"], out["removed_ids"]) == (["4"], ["1"])
    assert out["rank_changes"] == [{"id": "2", "parent_rank": 2, "rank": 1}]
    assert out["degraded_change"] == "became_degraded"
    assert out["latency_delta_ms"] == 150.5
    assert out["cost_delta_usd"] == 0.002
    assert out["parent_model"] == "m1"
    assert out["store_changed"] is True


def test_an_item_that_never_ran_did_not_run_on_another_build():
    """A re-run cancelled while queued has no store: not counted as "ran on another build"."""
    parent = facts(["1", "2"], build="b1")
    never_ran = facts([], status="cancelled", latency=None, cost=0.0, build=None)
    out = comparison.item_compare(parent=parent, rerun=never_ran)
    assert out["store_changed"] is None
    assert comparison.summary([(parent, never_ran, out)])["store_changed"] == 0


def test_item_compare_recovered_and_reordered():
    out = comparison.item_compare(parent=facts(["1", "2", "3"], degraded=True), rerun=facts(["3", "1", "2"]))
    assert out["degraded_change"] == "recovered"
    assert (out["results_changed"], out["order_changed"], out["jaccard"]) == (True, True, 1.0)


def test_item_compare_does_not_compare_results_of_a_failed_side():
    out = comparison.item_compare(
        parent=facts(["1"]), rerun=facts([], status="failed", latency=None, cost=0.0)
    )
    assert out["compared"] is False
    assert out["jaccard"] is None and out["results_changed"] is None and out["rank_changes"] is None
    assert out["degraded_change"] is None
    assert out["latency_delta_ms"] is None
    assert out["cost_delta_usd"] == -0.001


def test_summary_aggregates_compared_items_only():
    pairs = []
    for parent, rerun in [
        (facts(["1", "2"], latency=100, cost=0.001), facts(["1", "2"], latency=200, cost=0.002)),
        (facts(["1", "2"], latency=100, cost=0.001), facts(["2", "1"], latency=300, cost=0.002)),
        (
            facts(["1", "2"], latency=100, cost=0.001),
            facts(["2", "4"], degraded=True, latency=400, cost=0.002),
        ),
        (facts(["1"], latency=100, cost=0.001), facts([], status="cancelled", latency=None, cost=0.0)),
    ]:
        pairs.append((parent, rerun, comparison.item_compare(parent=parent, rerun=rerun)))
    out = comparison.summary(pairs)
    assert out == {
        "items": 4,
        "compared": 3,
        "not_compared": 1,
        "identical": 1,
        "reordered": 1,
        "changed": 1,
        "mean_jaccard": round((1 + 1 + 1 / 3) / 3, 4),
        "min_jaccard": 0.3333,
        "degraded": {"became_degraded": 1, "recovered": 0, "unchanged": 2},
        "latency_ms": {
            "parent_p50": 100.0,
            "rerun_p50": 300.0,
            "parent_p95": 100.0,
            "rerun_p95": 390.0,
            "mean_delta": 200.0,
        },
        "cost_usd": {"parent_total": 0.003, "rerun_total": 0.006, "delta": 0.003},
        "store_changed": 0,
    }


def test_progress_and_totals():
    jobs = [
        facts(["1"], latency=100, cost=0.5, prompt_tokens=10, completion_tokens=5),
        facts([], status="failed", latency=300, cost=0.25, prompt_tokens=1, completion_tokens=0),
        facts([], status="queued", latency=None, cost=0.0),
    ]
    assert comparison.progress(j.status for j in jobs) == {
        "total": 3,
        "queued": 1,
        "running": 0,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
        "finished": 2,
        "percent": 66.7,
    }
    assert comparison.totals(jobs) == {
        "prompt_tokens": 11,
        "completion_tokens": 5,
        "total_tokens": 16,
        "cost_usd": 0.75,
        "latency_ms": {"count": 2, "p50": 200.0, "p95": 290.0, "max": 300.0},
    }
