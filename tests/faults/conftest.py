"""Fault-injection fixtures: the e2e stack plus helpers to submit jobs and wait for them."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.conftest import (  # noqa: F401 - re-exported fixtures
    broker,
    broker_url,
    llm_server,
    rabbit_vhost,
    redis_url,
    stack,
    token,
)
from tests.e2e.harness import wait_for

TERMINAL = {"succeeded", "failed", "cancelled"}

#: Sweep fast and presume an attempt lost soon after its deadline, so recoveries take seconds.
FAST_SWEEP = {"AGENT_SWEEP_INTERVAL_SEC": "1", "AGENT_RUNNING_GRACE_SEC": "1", "AGENT_QUEUED_STALE_SEC": "2"}


@pytest.fixture
def e2e_vector_settings(catalogue_vector_settings):
    return catalogue_vector_settings


@pytest.fixture
def client(stack, token):
    with httpx.Client(base_url=stack.live_url, headers={"Authorization": f"Token {token}"}, timeout=30) as c:
        yield c


def submit(client: httpx.Client, query: str = "a whaling captain hunts a white whale", **body) -> str:
    response = client.post("/api/agent/jobs", json={"query": query, "top_k": 3, **body})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def jobs_of(ids: list[str]):
    from apps.agent.models import AgentJob

    return {str(job.id): job for job in AgentJob.objects.filter(id__in=ids)}


def wait_terminal(ids: list[str], *, timeout: float) -> dict:
    """Wait until every job is terminal; return {id: AgentJob}."""

    def done():
        jobs = jobs_of(ids)
        return jobs if len(jobs) == len(ids) and all(j.status in TERMINAL for j in jobs.values()) else None

    try:
        return wait_for(done, timeout=timeout, interval=0.2, message="jobs to end")
    except TimeoutError:
        states = {i: (j.status, j.attempts) for i, j in jobs_of(ids).items()}
        raise TimeoutError(f"jobs did not end: {states}") from None


def wait_status(job_id: str, status: str, *, attempts: int | None = None, timeout: float = 20.0):
    def reached():
        job = jobs_of([job_id]).get(job_id)
        if job and job.status == status and (attempts is None or job.attempts == attempts):
            return job
        return None

    return wait_for(reached, timeout=timeout, interval=0.05, message=f"{job_id} to be {status}")


class Elapsed:
    def __enter__(self):
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self.start
