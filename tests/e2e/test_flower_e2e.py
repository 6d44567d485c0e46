"""Flower against a real worker: a finished `agent.job_run` task shows up in its API, with ids only as
arguments, behind basic auth (401 without it). Flower runs offline (loopback only).

Workers start with task events off (CELERY_WORKER_SEND_TASK_EVENTS=false); the test relies on Flower
switching them on, as it does in production."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.e2e.harness import Flower, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

AUTH = ("flower-user", "flower-pw")
QUERY = "a whaling captain obsessed with a white whale"


@pytest.fixture
def flower(stack):
    process = Flower(stack.env, auth=AUTH)
    yield process
    process.stop()


def test_flower_shows_the_finished_job_task_with_ids_only_and_requires_auth(stack, token, flower):
    worker = stack.start_worker()  # while Flower starts
    flower.wait_ready()  # it must listen before the job runs: it only sees events, not history
    # Flower's periodic `enable_events` broadcast (every 5 s) reaches the worker, which logs it.
    wait_for(
        lambda: b"enabled by remote" in worker.log_path.read_bytes(),
        timeout=20,
        interval=0.2,
        message="Flower to switch the worker's task events on",
    )
    with httpx.Client(
        base_url=stack.live_url, headers={"Authorization": f"Token {token}"}, timeout=10
    ) as client:
        accepted = client.post("/api/agent/jobs", json={"query": QUERY, "top_k": 3})
        assert accepted.status_code == 202
        job_id = accepted.json()["id"]

    def finished_task():
        tasks = httpx.get(
            f"{flower.base}/api/tasks", params={"taskname": "agent.job_run"}, auth=AUTH, timeout=5
        )
        assert tasks.status_code == 200, tasks.text
        found = [t for t in tasks.json().values() if job_id in (t.get("args") or "")]
        return found[0] if found and found[0]["state"] == "SUCCESS" else None

    task = wait_for(finished_task, timeout=30, interval=0.3, message="flower to see the finished task")
    assert task["name"] == "agent.job_run"
    assert task["args"] == f"['{job_id}']"  # the job id only: no query text, prompt or key
    assert task["kwargs"] == "{}"
    assert task["worker"] == stack.workers[0].name
    assert QUERY not in json.dumps(task)
    assert task["received"] and task["started"] and task["succeeded"]
    assert task["result"] == "'succeeded'"  # the job's final status; the job row holds the answer

    detail = httpx.get(f"{flower.base}/api/task/info/{task['uuid']}", auth=AUTH, timeout=5)
    assert detail.status_code == 200 and detail.json()["args"] == f"['{job_id}']"

    assert httpx.get(f"{flower.base}/api/tasks", timeout=5).status_code == 401
    assert httpx.get(f"{flower.base}/api/tasks", auth=(AUTH[0], "wrong"), timeout=5).status_code == 401
    assert httpx.get(f"{flower.base}/", timeout=5).status_code == 401
    # The health check stays open (compose probes it without credentials) and says nothing else.
    health = httpx.get(f"{flower.base}/healthcheck", timeout=5)
    assert (health.status_code, health.text) == (200, "OK")


def test_flower_metrics_need_the_same_basic_auth(redis_url):
    """/metrics names task types, workers and queues: behind the basic auth, as `make up` and compose run it
    (Flower alone leaves it open; config/flower.py closes it). /healthcheck alone stays open."""
    import os

    env = {**os.environ, "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url, "PYTHONUNBUFFERED": "1"}
    flower = Flower(env, auth=AUTH, log_name="e2e-flower-metrics")
    try:
        flower.wait_ready()
        assert httpx.get(f"{flower.base}/metrics", timeout=5).status_code == 401
        assert httpx.get(f"{flower.base}/metrics", auth=(AUTH[0], "wrong"), timeout=5).status_code == 401
        scraped = httpx.get(f"{flower.base}/metrics", auth=AUTH, timeout=5)
        assert scraped.status_code == 200
        assert "flower_events_total" in scraped.text or "# HELP" in scraped.text
        health = httpx.get(f"{flower.base}/healthcheck", timeout=5)
        assert (health.status_code, health.text) == (200, "OK")
    finally:
        flower.stop()
