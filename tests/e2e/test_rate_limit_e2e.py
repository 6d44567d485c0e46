"""The provider's rate limit end to end: two worker processes share one limit in Redis.

The project's test server runs as its own process limited to N = 300 requests per minute (a token bucket:
5 per second, at most 5 at once); both workers get `LLM_RATE_RPM=300`. 80 jobs are submitted at once, i.e.
16 s of the provider's allowance, to 16 worker threads that would otherwise send them all in the first
second. No 429 reaches the jobs, every job succeeds without degrading, and the rate the provider saw is
within 10% of N. Measured on the shared 2-core machine (the test prints the figures), the limiter at 95% of
N: 292.9 calls per minute and no 429 sent; in another run at a load average of 20-22, 4 429s sent (each
retried inside its job). An earlier version at 100% of N: 312.6 per minute, no 429.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import pytest

from tests.e2e.harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

RPM = 300
JOBS = 80


@pytest.fixture
def limited_provider():
    from openai_testserver import start_subprocess

    server = start_subprocess(rate_rpm=RPM, latency_ms=20)
    yield server
    server.stop()


def test_two_workers_share_the_limit_and_no_429_reaches_the_jobs(stack, limited_provider):
    from django.contrib.auth import get_user_model

    from agent.types import AgentOptions
    from apps.agent.models import AgentJob, JobStatus
    from apps.agent.services.jobs import job_create

    env = {"LLM_BASE_URL": limited_provider.base_url, "LLM_RATE_RPM": str(RPM)}
    stack.start_worker(env=env)
    stack.start_worker(env=env)
    user = get_user_model().objects.create_user(username=f"rate-{uuid.uuid4().hex[:6]}")
    limited_provider.reset()  # full buckets: the allowance starts now

    for i in range(JOBS):
        job_create(owner=user, query=f"a ghost haunting an old house {i}", options=AgentOptions(top_k=3))
    wait_for(
        lambda: (
            not AgentJob.objects.filter(owner=user, status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).exists()
        ),
        timeout=120,
        interval=0.5,
        message="the jobs to end",
    )

    jobs = list(AgentJob.objects.filter(owner=user).prefetch_related("trace_steps"))
    assert {(job.status, job.degraded) for job in jobs} == {(JobStatus.SUCCEEDED, False)}
    llm_errors = [step.error for job in jobs for step in job.trace_steps.all() if step.name == "llm"]
    assert llm_errors == [None] * JOBS
    stats = limited_provider.stats()
    # No 429 reached a job (above). On a quiet machine the provider sends none at all; on this shared one a
    # worker thread descheduled between its slot and its request can make a clump: a few are sent, and each
    # is retried after its Retry-After within the job.
    assert stats["rate_limited"] <= JOBS * 0.05
    assert stats["calls"] == JOBS + stats["rate_limited"]
    arrivals = sorted(r["time"] for r in limited_provider.requests("/v1/chat/completions"))
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) * 60
    print(f"{JOBS} jobs: {rate:.1f} calls per minute (limit {RPM}); 429s sent: {stats['rate_limited']}")
    assert abs(rate - RPM) <= RPM * 0.10

    # The provider really was limiting: ten calls at once without the limiter get 429s.
    refused = 0
    for _ in range(10):
        request = urllib.request.Request(
            f"{limited_provider.base_url}/chat/completions",
            data=json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except urllib.error.HTTPError as exc:
            refused += exc.code == 429
    assert refused >= 4
