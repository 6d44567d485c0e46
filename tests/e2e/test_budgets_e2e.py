"""Spending budgets with a real Redis, real worker processes and the project's OpenAI-compatible test server.

- 200 paid jobs in flight on two worker processes never spend more than the cap, checked against the usage
  the test server reported for the server key; a user's own key still works once the budget is spent.
- The reservation of a worker killed with SIGKILL mid-call blocks the money until its lease ends, then
  frees it.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from decimal import Decimal

import httpx
import pytest
import redis as redis_lib

from agent.budget import BudgetSettings
from agent.types import AgentOptions
from apps.agent.models import TERMINAL_STATUSES, AgentJob, JobStatus, UserBudget
from apps.agent.services import jobs as job_services
from tests.e2e.conftest import API_KEY
from tests.e2e.harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PRICE_IN, PRICE_OUT = 10.0, 20.0  # USD per million tokens
MAX_TOKENS = 200
USER_KEY = "sk-user-own-e2e"


def budget_env(stack, settings, *, daily_usd: float, job_timeout: float | None = None) -> dict[str, str]:
    """Budgets, prices and hybrid mode for this process (the API) and the workers alike."""
    settings.LLM = dataclasses.replace(
        settings.LLM,
        prices={"test-model": (PRICE_IN, PRICE_OUT)},
        max_tokens=MAX_TOKENS,
        cost_mode=type(settings.LLM.cost_mode)("hybrid"),
        allow_byo_key=True,
    )
    settings.BUDGETS = BudgetSettings(user_daily_usd=daily_usd)
    env = {
        "LLM_PRICES": f"test-model={PRICE_IN}/{PRICE_OUT}",
        "LLM_MAX_TOKENS": str(MAX_TOKENS),
        "LLM_COST_MODE": "hybrid",
        "LLM_ALLOW_BYO_KEY": "true",
        "BUDGET_USER_DAILY_USD": str(daily_usd),
    }
    if job_timeout is not None:
        settings.AGENT_JOB_TIMEOUT_SEC = job_timeout
        env["AGENT_JOB_TIMEOUT_SEC"] = str(job_timeout)
    return env


def provider_cost(stack, key: str) -> float:
    """USD the test server's reported usage for `key` costs at the test prices."""
    usage = stack.llm.stats()["usage"].get(key, {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0})
    return (usage["prompt_tokens"] * PRICE_IN + usage["completion_tokens"] * PRICE_OUT) / 1_000_000


def api_client(stack, token: str) -> httpx.Client:
    return httpx.Client(base_url=stack.live_url, headers={"Authorization": f"Token {token}"}, timeout=20)


def owner_of(token: str):
    from rest_framework.authtoken.models import Token

    return Token.objects.get(key=token).user


@pytest.mark.timeout(600)
def test_200_paid_jobs_on_two_workers_never_spend_more_than_the_cap(stack, token, settings):
    cap = 0.25
    env = budget_env(stack, settings, daily_usd=cap)
    stack.llm.control(latency_ms=300)  # calls overlap: many reservations are held at once
    owner = owner_of(token)
    # 200 jobs accepted before anything ran (nothing spent yet), then two workers take them at once.
    queries = ["whales and the sea", "dragons for children", "a detective in Victorian London", "space"]
    for n in range(200):
        job_services.job_create(owner=owner, query=f"{queries[n % 4]} {n}", options=AgentOptions(top_k=2))
    for _ in range(2):
        stack.start_worker(env=env, concurrency=25)

    def all_done():
        return not AgentJob.objects.filter(owner=owner).exclude(status__in=TERMINAL_STATUSES).exists()

    def state():
        counts = Counter(AgentJob.objects.filter(owner=owner).values_list("status", flat=True))
        logs = "\n".join(f"--- {w.name}\n{w.log()[-4000:]}" for w in stack.workers)
        return f"jobs by status: {dict(counts)}\n{logs}"

    started = time.monotonic()
    # ~30 s on this 2-core machine alone (the cap refuses most jobs at once); CI's first pass once took over
    # 180 s, hence the wider bound and the state printed if it is ever exceeded.
    wait_for(all_done, timeout=400, interval=0.5, message="200 jobs to end", describe=state)
    elapsed = time.monotonic() - started

    jobs = list(AgentJob.objects.filter(owner=owner))
    assert len(jobs) == 200 and {j.status for j in jobs} == {JobStatus.SUCCEEDED}
    paid = [j for j in jobs if not j.degraded]
    refused = [j for j in jobs if j.degraded]
    assert paid and refused, (len(paid), len(refused))  # the cap bit in the middle of the run
    for job in refused:
        llm = job.trace_steps.get(name="llm")
        assert llm.error["code"] == "budget_exceeded" and job.cost_usd == 0
    # Never more than the cap: by the job rows, and by what the provider says it served on our key.
    recorded = float(sum(j.cost_usd for j in jobs))
    served = provider_cost(stack, API_KEY)
    assert recorded <= cap and served <= cap, (recorded, served)
    assert served == pytest.approx(recorded, abs=200 * 1e-6)  # rows keep 6 decimals
    print(
        f"budget e2e: {len(paid)} paid, {len(refused)} degraded in {elapsed:.0f} s; "
        f"rows ${recorded:.6f}, provider ${served:.6f}"
    )
    assert stack.llm.stats()["usage"][API_KEY]["calls"] == len(paid)
    # The ledger agrees and holds nothing once every job ended.
    with api_client(stack, token) as client:
        day = client.get("/api/agent/usage").json()["periods"]["day"]
        assert day["tracked"] is True and day["reserved_usd"] == 0
        assert day["spent_usd"] == pytest.approx(served, abs=1e-6)
        assert day["by_model"][0]["calls"] == len(paid)

        # Spent: an operator lowers the user's cap below the spend. A paid POST is refused ...
        UserBudget.objects.create(user=owner, daily_usd=Decimal("0.01"))
        refused_post = client.post("/api/agent/jobs", json={"query": "whales"})
        assert refused_post.status_code == 429, refused_post.text
        error = refused_post.json()["error"]
        assert error["code"] == "budget_exceeded" and error["details"]["period"] == "day"
        assert error["details"]["spent_usd"] == pytest.approx(served, abs=1e-6)
        assert int(refused_post.headers["Retry-After"]) > 0

        # ... while a job with the user's own key is accepted, calls the provider and is not degraded.
        accepted = client.post(
            "/api/agent/jobs", json={"query": "whales"}, headers={"X-LLM-API-Key": USER_KEY}
        )
        assert accepted.status_code == 202, accepted.text
        byo = wait_for(
            lambda: (b := client.get(accepted.json()["poll_url"]).json())["status"] == "succeeded" and b,
            timeout=30,
            message="the BYO job",
        )
        assert byo["degraded"] is False and byo["cost"]["key_source"] == "user"
        assert stack.llm.stats()["usage"][USER_KEY]["calls"] == 1
        after = client.get("/api/agent/usage").json()["periods"]["day"]
        assert after["spent_usd"] == day["spent_usd"]  # a user's own key never counts


def test_a_sigkilled_workers_reservation_blocks_until_its_lease_ends(stack, token, settings, redis_url):
    # Lease of a reservation: what is left of the job's deadline plus AGENT_RUNNING_GRACE_SEC (2 s).
    env = budget_env(stack, settings, daily_usd=100.0, job_timeout=40.0)
    owner = owner_of(token)
    stack.llm.control(fault="hang", hang_sec=60, fail_times=1)  # the first call never answers
    doomed = stack.start_worker(env=env, concurrency=2)
    with api_client(stack, token) as client:
        assert client.post("/api/agent/jobs", json={"query": "whales", "top_k": 2}).status_code == 202

        def reserved():
            return client.get("/api/agent/usage").json()["periods"]["day"]["reserved_usd"]

        held = wait_for(reserved, timeout=30, message="the first job's reservation")
        (lease_end,) = [
            score
            for key in redis_lib.Redis.from_url(redis_url).scan_iter(f"budget:v1:user:{owner.pk}:day:*:res")
            for _, score in redis_lib.Redis.from_url(redis_url).zrange(key, 0, -1, withscores=True)
        ]
        doomed.kill()  # SIGKILL mid-call: nobody settles or releases
        # Room for one call's worst case, not two: while the dead worker's lease lives, a second job
        # cannot reserve.
        UserBudget.objects.create(user=owner, daily_usd=Decimal(str(round(held * 1.5, 6))))
        stack.start_worker(env=env, concurrency=2)
        blocked = client.post("/api/agent/jobs", json={"query": "whales", "top_k": 2})
        assert blocked.status_code == 202, blocked.text
        blocked_job = wait_for(
            lambda: (b := client.get(blocked.json()["poll_url"]).json())["status"] == "succeeded" and b,
            timeout=30,
            message="the blocked job",
        )
        assert time.time() < lease_end, "the test was too slow to see the lease alive"
        assert blocked_job["degraded"] is True
        llm = next(s for s in blocked_job["trace"] if s["name"] == "llm")
        assert llm["error"]["code"] == "budget_exceeded"
        assert llm["error"]["details"]["reserved_usd"] == pytest.approx(held, abs=1e-6)

        # The lease ends: the dead worker's reservation is dropped and the money is free again.
        wait_for(lambda: reserved() == 0, timeout=60, message="the lease to end")
        assert time.time() >= lease_end  # not before
        freed = client.post("/api/agent/jobs", json={"query": "whales", "top_k": 2})
        job = wait_for(
            lambda: (b := client.get(freed.json()["poll_url"]).json())["status"] == "succeeded" and b,
            timeout=30,
            message="the job after the lease",
        )
        assert job["degraded"] is False, job["trace"]
        day = client.get("/api/agent/usage").json()["periods"]["day"]
        assert day["reserved_usd"] == 0 and day["spent_usd"] == pytest.approx(job["cost_usd"], abs=1e-6)
