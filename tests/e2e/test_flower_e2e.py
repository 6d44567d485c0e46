"""Flower against a real worker: a finished `agent.job_run` task shows up in its API, with ids only as
arguments, behind basic auth (401 without it). Flower runs offline (loopback only)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import httpx
import pytest

from tests.e2e.harness import BACKEND, REPO, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

AUTH = ("flower-user", "flower-pw")
QUERY = "a whaling captain obsessed with a white whale"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def flower(stack):
    """`celery flower` on a free loopback port with basic auth, as `make up` and compose start it."""
    port = free_port()
    log_path = REPO / "var" / f"e2e-flower-{port}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config.celery_app",
                "flower",
                "--address=127.0.0.1",
                f"--port={port}",
                f"--basic-auth={AUTH[0]}:{AUTH[1]}",
            ],
            cwd=BACKEND,
            env=stack.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def answers():
        if process.poll() is not None:
            raise RuntimeError(f"flower exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            return httpx.get(f"{base}/healthcheck", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(answers, timeout=30, interval=0.2, message="flower to answer")
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def test_flower_shows_the_finished_job_task_with_ids_only_and_requires_auth(stack, token, flower):
    stack.start_worker()
    with httpx.Client(
        base_url=stack.live_url, headers={"Authorization": f"Token {token}"}, timeout=10
    ) as client:
        accepted = client.post("/api/agent/jobs", json={"query": QUERY, "top_k": 3})
        assert accepted.status_code == 202
        job_id = accepted.json()["id"]

    def finished_task():
        tasks = httpx.get(f"{flower}/api/tasks", params={"taskname": "agent.job_run"}, auth=AUTH, timeout=5)
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

    detail = httpx.get(f"{flower}/api/task/info/{task['uuid']}", auth=AUTH, timeout=5)
    assert detail.status_code == 200 and detail.json()["args"] == f"['{job_id}']"
    workers = httpx.get(f"{flower}/api/workers", params={"refresh": "true"}, auth=AUTH, timeout=10)
    assert stack.workers[0].name in workers.json()

    assert httpx.get(f"{flower}/api/tasks", timeout=5).status_code == 401
    assert httpx.get(f"{flower}/api/tasks", auth=(AUTH[0], "wrong"), timeout=5).status_code == 401
    assert httpx.get(f"{flower}/", timeout=5).status_code == 401
    # The health check stays open (compose probes it without credentials) and says nothing else.
    health = httpx.get(f"{flower}/healthcheck", timeout=5)
    assert (health.status_code, health.text) == (200, "OK")
