"""Batches through a live API, a real Redis and a real Celery worker process.

- Priority: while a batch of 200 keeps every slot of a worker busy (LLM latency 300 ms), an interactive
  job submitted afterwards still finishes within about one batch job's time, long before the batch.
- A real re-run of 50 finished jobs with overrides, compared with the originals.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.conftest import BOTH_BROKERS
from tests.e2e.harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def client(stack, token):
    with httpx.Client(base_url=stack.live_url, headers={"Authorization": f"Token {token}"}, timeout=30) as c:
        yield c


def batch_until(client: httpx.Client, batch_id: str, predicate, *, timeout: float, message: str) -> dict:
    def check():
        body = client.get(f"/api/agent/batches/{batch_id}").json()
        return body if predicate(body) else None

    return wait_for(check, timeout=timeout, interval=0.2, message=message)


@BOTH_BROKERS
def test_interactive_job_is_served_promptly_while_a_batch_of_200_runs(stack, client, broker):
    stack.llm.control(latency_ms=300)
    stack.start_worker(concurrency=8)

    created = client.post(
        "/api/agent/batches", json={"queries": [f"a novel about topic {i}" for i in range(200)]}
    )
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    # Steady state: the first (cold) jobs are done, every slot of the worker runs a batch job, and the
    # rest of the 200 wait in the batch queue.
    batch_until(
        client,
        batch_id,
        lambda b: b["progress"]["finished"] >= 16,
        timeout=30,
        message="the batch to fill the worker",
    )

    started = time.monotonic()
    accepted = client.post(
        "/api/agent/jobs", json={"query": "a whaling captain and a white whale", "top_k": 3}
    )
    assert accepted.status_code == 202

    def job_done():
        body = client.get(accepted.json()["poll_url"]).json()
        return body if body["status"] in TERMINAL else None

    job = wait_for(job_done, timeout=15, interval=0.05, message="the interactive job")
    elapsed = time.monotonic() - started
    batch = client.get(f"/api/agent/batches/{batch_id}").json()
    print(
        f"\ninteractive job: {elapsed * 1000:.0f} ms end to end, queue {job['timings']['queue_ms']:.0f} ms; "
        f"batch then {batch['progress']['finished']}/200 finished"
    )

    assert job["status"] == "succeeded" and "Moby-Dick" in [r["title"] for r in job["results"]]
    # One LLM call (300 ms) plus at most one batch job's wait for a free slot, plus polling.
    assert job["timings"]["queue_ms"] < 1500, job["timings"]
    assert elapsed < 3.0
    # ...far before the batch ends (it needs 200 x 300 ms / 8 slots = 7.5 s at best).
    assert batch["progress"]["finished"] < 120, batch["progress"]

    # A burst of interactive jobs as large as the worker: each takes the next free slot before any
    # batch job does, so all of them start within about one batch job's time.
    burst = [
        client.post("/api/agent/jobs", json={"query": f"pirates and treasure {i}", "top_k": 3}).json()["id"]
        for i in range(8)
    ]
    from apps.agent.models import AgentJob

    def burst_done():
        rows = list(AgentJob.objects.filter(id__in=burst, status__in=TERMINAL))
        return rows if len(rows) == len(burst) else None

    rows = wait_for(burst_done, timeout=15, interval=0.05, message="the burst of interactive jobs")
    waits = sorted((row.started_at - row.created_at).total_seconds() * 1000 for row in rows)
    print(f"burst of 8: queue wait p50 {waits[3]:.0f} ms, max {waits[-1]:.0f} ms")
    assert all(row.status == "succeeded" for row in rows)
    assert waits[-1] < 2000, waits

    # Cancelling stops the rest: queued jobs at once, running ones at their next step.
    cancelled = client.post(f"/api/agent/batches/{batch_id}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] in {"cancelling", "cancelled"}
    final = batch_until(
        client, batch_id, lambda b: b["status"] == "cancelled", timeout=15, message="the batch to end"
    )
    assert final["progress"]["queued"] == 0 and final["progress"]["running"] == 0
    assert final["progress"]["cancelled"] > 50
    assert final["progress"]["total"] == 200


def test_rerun_of_50_jobs_with_overrides_on_a_real_worker(stack, client):
    stack.start_worker(concurrency=16)

    # The originals: 50 questions answered with top_k 3 (a batch of queries).
    queries = [
        f"{topic} {n}" for n in range(10) for topic in ("whales", "dragons", "detectives", "love", "war")
    ]
    originals = client.post("/api/agent/batches", json={"queries": queries, "overrides": {"top_k": 3}})
    assert originals.status_code == 202, originals.text
    first = batch_until(
        client, originals.json()["id"], lambda b: b["completed_at"], timeout=60, message="the originals"
    )
    assert first["progress"]["succeeded"] == 50

    # Re-run them all with another model and top_k 5, chosen by a filter over the user's history.
    rerun = client.post(
        "/api/agent/batches",
        json={"filter": {"status": "succeeded"}, "overrides": {"top_k": 5, "model": "gpt-4o-mini"}},
        headers={"Idempotency-Key": "rerun-50"},
    )
    assert rerun.status_code == 202, rerun.text
    assert rerun.json()["size"] == 50
    repeat = client.post(
        "/api/agent/batches",
        json={"filter": {"status": "succeeded"}, "overrides": {"top_k": 5, "model": "gpt-4o-mini"}},
        headers={"Idempotency-Key": "rerun-50"},
    )
    assert repeat.json()["id"] == rerun.json()["id"]
    view = batch_until(
        client, rerun.json()["id"], lambda b: b["completed_at"], timeout=60, message="the re-run"
    )

    assert view["status"] == "completed"
    assert view["progress"]["succeeded"] == 50
    original_ids = {item["job_id"] for item in first["items"]}
    assert {item["parent_id"] for item in view["items"]} == original_ids
    assert {item["model"] for item in view["items"]} == {"gpt-4o-mini"}
    # Retrieval is deterministic: five books now, the same three first ones as before.
    for item in view["items"]:
        compared = item["comparison"]
        assert len(compared["parent_result_ids"]) == 3 and len(item["result_ids"]) == 5
        assert item["result_ids"][:3] == compared["parent_result_ids"], item
        assert (compared["jaccard"], compared["removed_ids"], compared["rank_changes"]) == (0.6, [], [])
        assert compared["parent_model"] == "test-model"
        assert compared["store_changed"] is False
    summary = view["comparison"]
    assert (summary["compared"], summary["changed"], summary["mean_jaccard"]) == (50, 50, 0.6)
    assert summary["degraded"] == {"became_degraded": 0, "recovered": 0, "unchanged": 50}
    assert view["totals"]["latency_ms"]["count"] == 50

    # The model override reached the provider; every batch job ran on the batch task.
    models = [call["body"]["model"] for call in stack.llm.requests("/v1/chat/completions")]
    assert models.count("gpt-4o-mini") == 50 and models.count("test-model") == 50
    report = client.get(f"/api/agent/batches/{view['id']}/report?format=csv")
    assert report.status_code == 200 and len(report.text.strip().splitlines()) == 51
