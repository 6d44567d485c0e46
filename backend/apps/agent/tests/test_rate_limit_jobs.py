"""A job under the provider's rate limit (services/rate_limit.py): it waits for its slot, and ends degraded
with `rate_limited` in its trace when no slot comes before its deadline. One process here (the limit is kept
in memory without a Redis cache); tests/e2e/test_rate_limit_e2e.py runs it across worker processes."""

from __future__ import annotations

import dataclasses

import pytest

from agent.types import AgentOptions
from apps.agent.models import JobStatus
from apps.agent.services import job_execution, jobs
from apps.agent.services import rate_limit as rate_limit_service
from openai_testserver import start_in_thread

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def server():
    with start_in_thread() as handle:
        yield handle


@pytest.fixture
def limited(settings, server, monkeypatch):
    server.reset()
    monkeypatch.setattr(rate_limit_service, "_limiters", {})  # a fresh bucket for each test
    settings.LLM = dataclasses.replace(
        settings.LLM,
        provider="openai_compatible",
        base_url=server.base_url,
        api_key="sk-rate-limited-jobs",
        model="m",
        rate_rpm=6,  # one call per 10 s, two at once
        timeout_sec=2.0,
    )
    return settings


def run_job(user) -> jobs.AgentJob:
    job, _ = jobs.job_create(owner=user, query="whales", options=AgentOptions(top_k=2), enqueue=False)
    job_execution.job_run(job_id=job.id)
    job.refresh_from_db()
    return job


def test_a_job_without_a_slot_before_its_deadline_ends_degraded_with_rate_limited(
    user, store, limited, server
):
    limited.AGENT_JOB_TIMEOUT_SEC = 10
    first, second = run_job(user), run_job(user)  # the burst of two
    limited.AGENT_JOB_TIMEOUT_SEC = 0.5

    third = run_job(user)  # the next slot is 10 s after the first: past its 0.5 s deadline

    assert [(j.status, j.degraded) for j in (first, second)] == [(JobStatus.SUCCEEDED, False)] * 2
    assert (third.status, third.degraded) == (JobStatus.SUCCEEDED, True)
    llm_step = third.trace_steps.get(name="llm")
    assert llm_step.error["code"] == "rate_limited"
    assert [r["title"] for r in third.result["results"]] == ["Moby-Dick", "The Old Man and the Sea"]
    assert len(server.requests("/v1/chat/completions")) == 2  # the third never called the provider


def test_a_job_waits_for_its_slot_within_its_deadline(user, store, limited, server):
    limited.LLM = dataclasses.replace(limited.LLM, rate_rpm=12)  # one call per 5 s, two at once
    limited.AGENT_JOB_TIMEOUT_SEC = 15
    run_job(user), run_job(user)

    third = run_job(user)  # its slot is 5 s after the first job's

    assert (third.status, third.degraded) == (JobStatus.SUCCEEDED, False)
    assert third.trace_steps.get(name="llm").duration_ms >= 2000
    assert len(server.requests("/v1/chat/completions")) == 3


def test_no_limit_means_no_limiter(settings):
    settings.LLM = dataclasses.replace(settings.LLM, rate_rpm=None, rate_tpm=None)

    assert rate_limit_service.provider_limiter() is None
