"""Spending budgets: the Redis ledger (on fakeredis, Lua included), admission, jobs, batches, usage.

The same ledger against a real Redis and two worker processes: tests/e2e/test_budgets_e2e.py.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from agent.budget import BudgetSettings, Refusal, Reservation
from agent.config import CostMode
from agent.llm_factory import StubLLM
from agent.types import AgentOptions
from apps.agent.models import AgentJob, JobStatus, SyncCall, UserBudget
from apps.agent.services import budget_ledger, budgets, job_execution, jobs, key_vault
from apps.agent.tests.factories import job_make
from apps.agent.tests.wiring import wire_runtime

pytestmark = pytest.mark.django_db

PRICE = (1000.0, 2000.0)  # USD per million tokens


@pytest.fixture
def ledger(monkeypatch):
    """The budget ledger's Redis, served by fakeredis (Lua scripts run on lupa)."""
    import fakeredis

    client = fakeredis.FakeRedis()
    monkeypatch.setattr(budget_ledger, "ledger_client", lambda: client)
    monkeypatch.setattr(budget_ledger, "_scripts", {})
    return client


@pytest.fixture(autouse=True)
def _fresh_throttle_counters():
    """The throttle counts in the cache, which outlives a test: every test starts from zero."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def paid(settings):
    """The server key pays for model "m" at PRICE; LLM_MAX_TOKENS=100."""
    settings.LLM = dataclasses.replace(
        settings.LLM,
        provider="openai_compatible",
        api_key="sk-server",
        model="m",
        prices={"m": PRICE},
        max_tokens=100,
        allow_byo_key=True,
    )
    settings.BUDGETS = BudgetSettings()
    return settings


def caps_for(user, **limits):
    UserBudget.objects.update_or_create(user=user, defaults=limits)
    return budgets.budget_caps(owner_id=user.pk)


def test_a_reservation_is_checked_against_every_cap_at_once(paid, user, ledger):
    paid.BUDGETS = BudgetSettings(global_daily_usd=0.5)
    ledger_ = budgets.RedisLedger(caps_for(user, daily_usd=Decimal("1")))

    first = ledger_.reserve(amount_usd=0.4, model="m", lease_sec=30)
    second = ledger_.reserve(amount_usd=0.2, model="m", lease_sec=30)

    assert isinstance(first, Reservation)
    assert isinstance(second, Refusal) and second.code == "budget_exceeded"
    assert second.details["scope"] == "global" and second.details["period"] == "day"
    assert second.details["reserved_usd"] == 0.4 and second.details["needed_usd"] == 0.2
    # The refused reservation left nothing behind in any cap.
    user_day = budgets.budget_usage_get(user=user)["periods"]["day"]
    assert user_day["reserved_usd"] == 0.4 and user_day["limit_usd"] == 1.0


def test_concurrent_reservations_never_exceed_the_cap(paid, user, ledger):
    caps = caps_for(user, daily_usd=Decimal("1"))
    budget_ledger.counters_read(
        caps, datetime.now(UTC)
    )  # counters built from the job rows here, not in the threads
    outcomes: list = []
    start = threading.Barrier(40)

    def reserve():
        start.wait()
        outcomes.append(budgets.RedisLedger(caps).reserve(amount_usd=0.1, model="m", lease_sec=30))

    threads = [threading.Thread(target=reserve) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(isinstance(o, Reservation) for o in outcomes) == 10
    assert budgets.budget_usage_get(user=user)["periods"]["day"]["reserved_usd"] == pytest.approx(1.0)


def test_settling_moves_the_reservation_to_the_spend_of_its_model(paid, user, ledger):
    ledger_ = budgets.RedisLedger(caps_for(user, daily_usd=Decimal("1"), monthly_usd=Decimal("5")))
    reservation = ledger_.reserve(amount_usd=0.3, model="m", lease_sec=30)
    failed = ledger_.reserve(amount_usd=0.3, model="m", lease_sec=30)

    ledger_.settle(reservation, cost_usd=0.05, model="m", charged=True)
    ledger_.settle(failed, cost_usd=0.0, model="m", charged=False)

    for period, limit in (("day", 1.0), ("month", 5.0)):
        view = budgets.budget_usage_get(user=user)["periods"][period]
        assert view["spent_usd"] == 0.05 and view["reserved_usd"] == 0.0
        assert view["remaining_usd"] == pytest.approx(limit - 0.05) and view["tracked"] is True
        assert view["by_model"] == [{"model": "m", "spent_usd": 0.05, "reserved_usd": 0.0, "calls": 1}]


def test_a_reservation_whose_lease_ended_is_dropped(paid, user, ledger):
    """A worker killed mid-call never settles: its lease ends and the money is free again."""
    ledger_ = budgets.RedisLedger(caps_for(user, daily_usd=Decimal("1")))
    assert isinstance(ledger_.reserve(amount_usd=0.9, model="m", lease_sec=0.05), Reservation)
    assert isinstance(ledger_.reserve(amount_usd=0.9, model="m", lease_sec=30), Refusal)

    time.sleep(0.1)

    assert isinstance(ledger_.reserve(amount_usd=0.9, model="m", lease_sec=30), Reservation)
    assert budgets.budget_usage_get(user=user)["periods"]["day"]["reserved_usd"] == 0.9


def test_a_call_that_settles_after_its_lease_ended_is_charged_once_and_frees_nothing_twice(
    paid, user, ledger
):
    """A live but slow attempt (since 2026-12-02 not taken over while its worker lives) may settle after
    its lease ended and another reservation's clean-up dropped it: its cost is charged once, and the
    money it had reserved is not freed a second time."""
    ledger_ = budgets.RedisLedger(caps_for(user, daily_usd=Decimal("1")))
    slow = ledger_.reserve(amount_usd=0.5, model="m", lease_sec=0.05)
    assert isinstance(slow, Reservation)
    time.sleep(0.1)
    other = ledger_.reserve(amount_usd=0.3, model="m", lease_sec=30)  # drops the slow call's reservation
    assert isinstance(other, Reservation)

    ledger_.settle(slow, cost_usd=0.2, model="m", charged=True)

    day = budgets.budget_usage_get(user=user)["periods"]["day"]
    assert (day["spent_usd"], day["reserved_usd"]) == (0.2, 0.3)
    ledger_.settle(other, cost_usd=0.1, model="m", charged=True)
    day = budgets.budget_usage_get(user=user)["periods"]["day"]
    assert (day["spent_usd"], day["reserved_usd"]) == (pytest.approx(0.3), 0.0)
    assert day["by_model"] == [
        {"model": "m", "spent_usd": pytest.approx(0.3), "reserved_usd": 0.0, "calls": 2}
    ]


def test_lost_counters_are_rebuilt_from_the_jobs_recorded_costs(paid, user, other_user, ledger):
    now = datetime.now(UTC)
    for owner, key_source, cost in (
        (user, "server", "0.7"),
        (user, "user", "5"),
        (other_user, "server", "3"),
    ):
        AgentJob.objects.create(
            owner=owner,
            query="q",
            timeout_sec=10,
            status=JobStatus.SUCCEEDED,
            finished_at=now,
            cost_mode="hybrid",
            key_source=key_source,
            provider="openai_compatible",
            model="m",
            cost_usd=Decimal(cost),
        )
    ledger_ = budgets.RedisLedger(caps_for(user, daily_usd=Decimal("1")))

    # Only this user's server-key spend counts: 0.7 of 1.0 is gone, whatever Redis forgot.
    refusal = ledger_.reserve(amount_usd=0.4, model="m", lease_sec=30)
    assert isinstance(refusal, Refusal) and refusal.details["spent_usd"] == 0.7
    assert isinstance(ledger_.reserve(amount_usd=0.3, model="m", lease_sec=30), Reservation)


def test_the_ledger_fails_closed_when_redis_is_down(paid, user, monkeypatch):
    import redis

    def down():
        raise redis.ConnectionError("down")

    monkeypatch.setattr(budget_ledger, "ledger_client", down)
    refusal = budgets.RedisLedger(caps_for(user, daily_usd=Decimal("1"))).reserve(
        amount_usd=0.1, model="m", lease_sec=1
    )
    assert isinstance(refusal, Refusal) and refusal.code == "budget_unavailable"


# --- jobs ----------------------------------------------------------------------------------------


class PaidStub(StubLLM):
    """Stands in for the provider: answers like the stub, reports a cost, counts its calls."""

    provider = "openai_compatible"
    calls = 0

    def invoke(self, prompt, *, deadline=None):
        PaidStub.calls += 1
        return {**super().invoke(prompt, deadline=deadline), "provider": self.provider, "cost_usd": 0.002}


@pytest.fixture
def paid_llm(monkeypatch):
    PaidStub.calls = 0
    wire_runtime(monkeypatch, llm_for=lambda job, key: PaidStub(model=job.model))
    return PaidStub


def spend(user, usd: str):
    AgentJob.objects.create(
        owner=user,
        query="old",
        timeout_sec=10,
        status=JobStatus.SUCCEEDED,
        finished_at=datetime.now(UTC),
        cost_mode="paid",
        key_source="server",
        provider="openai_compatible",
        model="m",
        cost_usd=Decimal(usd),
    )


def test_a_job_that_cannot_reserve_succeeds_degraded_without_a_paid_call(paid, user, ledger, store, paid_llm):
    UserBudget.objects.create(user=user, daily_usd=Decimal("1"))
    query = "novels about whales and the sea"
    job, _ = jobs.job_create(owner=user, query=query, options=AgentOptions(top_k=2), enqueue=False)
    spend(user, "0.9999")  # spent after the job was accepted

    assert job_execution.job_run(job_id=job.id) == JobStatus.SUCCEEDED

    job.refresh_from_db()
    assert job.degraded is True and job.cost_usd == 0 and paid_llm.calls == 0
    assert [r["id"] for r in job.result["results"]] == ["1", "2"]  # the retrieved books
    assert job.result["message"].startswith("The spending budget for the language model is used up.")
    llm_step = job.trace_steps.get(name="llm")
    assert llm_step.error["code"] == "budget_exceeded"
    assert llm_step.error["details"]["period"] == "day" and llm_step.error["details"]["scope"] == "user"


def test_a_job_that_fits_is_charged_and_settled(paid, user, ledger, store, paid_llm):
    UserBudget.objects.create(user=user, daily_usd=Decimal("10"))  # the worst case is about 1.5
    job, _ = jobs.job_create(owner=user, query="whales", options=AgentOptions(top_k=2), enqueue=False)

    assert job_execution.job_run(job_id=job.id) == JobStatus.SUCCEEDED

    job.refresh_from_db()
    assert job.degraded is False and paid_llm.calls == 1 and job.cost_usd == Decimal("0.002")
    day = budgets.budget_usage_get(user=user)["periods"]["day"]
    assert day["spent_usd"] == 0.002 and day["reserved_usd"] == 0.0


def test_jobs_paid_with_the_users_own_key_ignore_an_exhausted_budget(paid, user, ledger, store, paid_llm):
    paid.LLM = dataclasses.replace(paid.LLM, cost_mode=type(paid.LLM.cost_mode)("hybrid"))
    UserBudget.objects.create(user=user, daily_usd=Decimal("1"))
    spend(user, "1")
    job, _ = jobs.job_create(
        owner=user, query="whales", options=AgentOptions(top_k=2), byo_api_key="sk-mine", enqueue=False
    )
    key_vault.key_put(job_id=job.id, api_key="sk-mine")  # the hand-off job_create did (locmem cache)

    assert job.key_source == "user"
    assert job_execution.job_run(job_id=job.id) == JobStatus.SUCCEEDED
    job.refresh_from_db()
    assert job.degraded is False and paid_llm.calls == 1


def server_job(owner, model="m"):
    return AgentJob(owner=owner, key_source="server", provider="openai_compatible", model=model)


def global_day_spent(user) -> float:
    (cap,) = [c for c in budgets.budget_caps(owner_id=user.pk) if c.scope == "global" and c.period == "day"]
    return budget_ledger.usd(budget_ledger.counters_read([cap], datetime.now(UTC))[0]["spent"])


def test_an_uncapped_users_paid_calls_still_count_in_the_global_counter(paid, user, other_user, ledger):
    """The counter that capped users' calls keep must hold everyone's spend: a global cap set later in
    the period starts from it."""
    UserBudget.objects.create(user=other_user, daily_usd=Decimal("10"))
    capped = budgets.budget_guard(
        PaidStub(model="m"), owner_id=other_user.pk, decision=server_job(other_user)
    )
    uncapped = budgets.budget_guard(PaidStub(model="m"), owner_id=user.pk, decision=server_job(user))

    capped.invoke("whales", deadline=5)
    uncapped.invoke("whales", deadline=5)

    paid.BUDGETS = BudgetSettings(global_daily_usd=1.0)  # set later in the day
    assert global_day_spent(user) == pytest.approx(0.004)


def test_an_uncapped_call_is_never_held_back_by_the_ledger(paid, user, monkeypatch):
    """No cap applies: neither Redis being down nor a model without a price stops the call."""
    import redis

    class Down:
        def __getattr__(self, name):
            raise redis.ConnectionError("down")

    monkeypatch.setattr(budget_ledger, "ledger_client", lambda: Down())
    PaidStub.calls = 0
    for model in ("m", "unpriced"):
        llm = budgets.budget_guard(PaidStub(model=model), owner_id=user.pk, decision=server_job(user, model))
        assert llm.invoke("whales", deadline=5)["error"] is None
    assert PaidStub.calls == 2


# --- the API ---------------------------------------------------------------------------------------


def test_post_of_a_job_over_budget_is_429_budget_exceeded_with_retry_after(paid, user, api, ledger):
    paid.BUDGETS = BudgetSettings(user_daily_usd=1.0)
    spend(user, "0.95")  # 0.05 left; one call of an empty prompt needs 100 * 2000 / 1e6 = 0.2

    response = api.post("/api/agent/jobs", {"query": "whales"}, format="json")

    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert error["message"].startswith(
        "Your daily budget of $1 is spent ($0.950000 spent, $0.000000 reserved)"
    )
    details = error["details"]
    assert (details["scope"], details["period"], details["limit_usd"]) == ("user", "day", 1.0)
    assert details["spent_usd"] == 0.95
    reset = datetime.fromisoformat(details["resets_at"])
    assert reset.hour == 0 and reset > datetime.now(UTC)
    assert 0 < int(response["Retry-After"]) <= 86400
    assert not AgentJob.objects.filter(query="whales").exists()


def test_post_with_the_users_own_key_is_accepted_over_budget(paid, user, api, ledger):
    paid.LLM = dataclasses.replace(paid.LLM, cost_mode=type(paid.LLM.cost_mode)("hybrid"))
    paid.BUDGETS = BudgetSettings(user_daily_usd=1.0)
    spend(user, "1")

    response = api.post(
        "/api/agent/jobs", {"query": "whales"}, format="json", headers={"X-LLM-API-Key": "sk-mine"}
    )

    assert response.status_code == 202


def test_a_capped_model_without_a_price_is_refused_at_post(paid, user, api, ledger):
    paid.LLM = dataclasses.replace(paid.LLM, prices={})
    UserBudget.objects.create(user=user, daily_usd=Decimal("1"))

    response = api.post("/api/agent/jobs", {"query": "whales"}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "budget_unpriced_model"


def test_a_batch_shows_its_worst_case_and_is_refused_when_it_cannot_fit(paid, user, api, ledger, store):
    paid.BUDGETS = BudgetSettings(user_daily_usd=100.0)
    body = {"queries": ["whales", "dragons"], "overrides": {"top_k": 1}}

    accepted = api.post("/api/agent/batches", body, format="json")
    assert accepted.status_code == 202
    estimate = accepted.json()["estimated_cost_usd"]
    # Two jobs of at most 100 tokens out (0.2 USD each) and a prompt with one book (>1,200 tokens).
    assert 2 * (0.2 + 1.2) < estimate < 1.0 * 10

    paid.BUDGETS = BudgetSettings(user_daily_usd=estimate * 1.5)
    big = {"queries": ["whales", "dragons", "whales", "dragons"], "overrides": {"top_k": 1}}
    refused = api.post("/api/agent/batches", big, format="json")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"
    # What was needed: twice the first batch's worst case, more than the 1.5 times of it that is left.
    assert refused.json()["error"]["details"]["needed_usd"] == pytest.approx(estimate * 2, rel=1e-6)
    assert refused.json()["error"]["details"]["spent_usd"] == 0  # the accepted batch has not run


def test_usage_is_the_users_own_and_staff_may_see_anyones(
    paid, user, other_user, api, other_api, ledger, django_user_model
):
    paid.BUDGETS = BudgetSettings(user_monthly_usd=10.0)
    spend(user, "0.25")

    mine = api.get("/api/agent/usage").json()
    assert mine["user"]["username"] == "alice"
    assert mine["periods"]["month"]["limit_usd"] == 10.0
    assert mine["periods"]["month"]["spent_usd"] == 0.25
    assert mine["periods"]["day"]["limit_usd"] is None
    assert mine["periods"]["month"]["by_model"] == [
        {"model": "m", "spent_usd": 0.25, "reserved_usd": 0.0, "calls": 1}
    ]

    # Another user's usage is not found for a non-staff user, and the list is staff-only.
    assert other_api.get("/api/agent/usage?user=alice").json()["error"]["code"] == "not_found"
    assert other_api.get("/api/agent/usage/users").json()["error"]["code"] == "permission_denied"

    other_user.is_staff = True
    other_user.save()
    assert other_api.get("/api/agent/usage?user=alice").json()["periods"]["month"]["spent_usd"] == 0.25
    # No username holds a NUL (PostgreSQL's text cannot: it was a DataError, a 500)
    assert other_api.get("/api/agent/usage?user=al%00ice").json()["error"]["code"] == "not_found"
    rows = other_api.get("/api/agent/usage/users").json()
    assert [(r["user"]["username"], r["month_spent_usd"], r["month_limit_usd"]) for r in rows] == [
        ("alice", 0.25, 10.0)
    ]


def test_the_admin_lists_spend_by_user_and_edits_budgets(paid, user, other_user, client, django_user_model):
    paid.BUDGETS = BudgetSettings(user_daily_usd=2.0)
    spend(user, "0.125")
    UserBudget.objects.create(user=other_user, unlimited=True)
    admin = django_user_model.objects.create_superuser(username="root", password="pw-root")
    client.force_login(admin)

    page = client.get("/admin/agent/spendbyuser/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "0.125000" in text and "$2 / unlimited" in text and "unlimited / unlimited" in text
    assert client.get("/admin/agent/userbudget/").status_code == 200
    assert client.get("/admin/agent/userbudget/add/").status_code == 200


def test_a_cancel_during_the_paid_call_keeps_its_cost_on_the_row(paid, user, ledger, store, monkeypatch):
    """The provider was paid all the same: the row keeps the cost that budgets are rebuilt from."""
    job, _ = jobs.job_create(owner=user, query="whales", options=AgentOptions(top_k=2), enqueue=False)

    class CancelledDuringCall(PaidStub):
        def invoke(self, prompt, *, deadline=None):
            AgentJob.objects.filter(id=job.id).update(cancel_requested=True)  # as POST .../cancel does
            return super().invoke(prompt, deadline=deadline)

    wire_runtime(monkeypatch, llm_for=lambda job, key: CancelledDuringCall(model=job.model))

    assert job_execution.job_run(job_id=job.id) == JobStatus.CANCELLED
    job.refresh_from_db()
    assert job.cost_usd == Decimal("0.002") and job.prompt_tokens > 0


def test_a_cancel_while_the_answer_streams_keeps_what_was_paid_on_the_row_and_in_the_budget(
    paid, user, ledger, store, monkeypatch
):
    """The cancel stops the stream at its first delta: the call was paid, so the row that budgets are
    rebuilt from and the live counter both hold its cost."""
    UserBudget.objects.create(user=user, daily_usd=Decimal("10"))
    job, _ = jobs.job_create(owner=user, query="whales", options=AgentOptions(top_k=2), enqueue=False)
    monkeypatch.setattr(job_execution, "CANCEL_CHECK_INTERVAL_SEC", 0.0)  # every delta asks the row

    class CancelledDuringCall(PaidStub):
        def invoke(self, prompt, *, deadline=None):
            AgentJob.objects.filter(id=job.id).update(cancel_requested=True)
            return super().invoke(prompt, deadline=deadline)

    wire_runtime(monkeypatch, llm_for=lambda job, key: CancelledDuringCall(model=job.model))

    assert job_execution.job_run(job_id=job.id) == JobStatus.CANCELLED
    job.refresh_from_db()
    assert job.result is None  # stopped mid-answer, not finished and then discarded
    assert job.cost_usd == Decimal("0.002") and job.prompt_tokens > 0 and job.completion_tokens > 0
    day = budgets.budget_usage_get(user=user)["periods"]["day"]
    assert day["spent_usd"] == 0.002 and day["reserved_usd"] == 0.0


def test_a_job_runs_on_the_key_it_was_accepted_with_whatever_the_worker_decides_today(paid, user):
    """A hybrid job accepted with the user's key (and so admitted without a budget) must not run on the
    server's key, unbudgeted, because this worker has LLM_ALLOW_BYO_KEY=false."""
    job = job_make(
        user,
        status=JobStatus.QUEUED,
        cost_mode="hybrid",
        key_source="user",
        provider="openai_compatible",
        model="m",
    )
    paid.LLM = dataclasses.replace(paid.LLM, cost_mode=CostMode.HYBRID, allow_byo_key=False)

    runnable = job_execution.runnable_for(job, "sk-user")

    assert runnable.decision.key_source == "user" and runnable.model == "m"


def test_a_server_paid_job_on_a_worker_without_the_server_key_fails_naming_why(paid, user, store):
    """Not answered by the stub as if it were the paid model: the job fails with a clear code."""
    job = job_make(
        user, status=JobStatus.QUEUED, key_source="server", provider="openai_compatible", model="m"
    )
    paid.LLM = dataclasses.replace(paid.LLM, api_key=None)

    assert job_execution.job_run(job_id=job.id) == JobStatus.FAILED

    job.refresh_from_db()
    assert job.error["code"] == "llm_unavailable" and "server API key" in job.error["message"]
    assert job.result is None and job.attempts == 1


# --- the synchronous endpoint's spend is durable -------------------------------------------------------


@pytest.fixture
def paid_sync(monkeypatch, store):
    """POST /api/agent/ answers through PaidStub (its runnable is built per request, not per job)."""
    PaidStub.calls = 0
    monkeypatch.setattr(jobs, "build_llm_runnable", lambda **kwargs: PaidStub(model=kwargs["settings"].model))
    return PaidStub


def test_a_synchronous_paid_call_is_recorded_and_a_rebuild_counts_it(
    paid, user, other_user, api, ledger, paid_sync, client, django_user_model
):
    UserBudget.objects.create(user=user, daily_usd=Decimal("10"))

    response = api.post("/api/agent/", {"query": "whales", "top_k": 1}, format="json")

    assert response.status_code == 200 and paid_sync.calls == 1
    call = SyncCall.objects.get()
    assert (call.owner_id, call.model, call.cost_usd) == (user.pk, "m", Decimal("0.002"))
    assert call.prompt_tokens > 0 and call.provider == "openai_compatible"

    ledger.flushall()  # Redis lost its data: the counters are rebuilt from the database
    day = api.get("/api/agent/usage").json()["periods"]["day"]
    assert (day["spent_usd"], day["reserved_usd"], day["tracked"]) == (0.002, 0.0, True)
    assert day["by_model"] == [{"model": "m", "spent_usd": 0.002, "reserved_usd": 0.0, "calls": 1}]
    refusal = budgets.RedisLedger(budgets.budget_caps(owner_id=user.pk)).reserve(
        amount_usd=9.999, model="m", lease_sec=30
    )
    assert isinstance(refusal, Refusal) and refusal.details["spent_usd"] == 0.002

    # Staff's list and the admin's spend list count it too, beside a job's spend.
    spend(user, "0.001")
    other_user.is_staff = True
    other_user.save()
    from rest_framework.test import APIClient

    staff = APIClient()
    staff.force_authenticate(other_user)
    rows = staff.get("/api/agent/usage/users").json()
    assert [(r["user"]["username"], r["day_spent_usd"], r["month_calls"]) for r in rows] == [
        ("alice", 0.003, 2)
    ]
    admin = django_user_model.objects.create_superuser(username="root", password="pw-root")
    client.force_login(admin)
    assert "0.003000" in client.get("/admin/agent/spendbyuser/").content.decode()


def test_a_synchronous_call_with_the_users_own_key_records_nothing(paid, user, api, ledger, paid_sync):
    paid.LLM = dataclasses.replace(paid.LLM, cost_mode=type(paid.LLM.cost_mode)("hybrid"))
    paid.BUDGETS = BudgetSettings(user_daily_usd=1.0)

    response = api.post(
        "/api/agent/", {"query": "whales"}, format="json", headers={"X-LLM-API-Key": "sk-mine"}
    )

    assert response.status_code == 200 and paid_sync.calls == 1
    assert not SyncCall.objects.exists()


# --- a batch holds its worst case ----------------------------------------------------------------------


BATCH = {"queries": ["whales", "dragons"], "overrides": {"top_k": 1}}


def batch_estimate(paid, api) -> float:
    """The worst case of BATCH, measured by creating it once under a generous cap (then forgotten)."""
    paid.BUDGETS = BudgetSettings(user_daily_usd=1000.0)
    response = api.post("/api/agent/batches", BATCH, format="json")
    assert response.status_code == 202
    budgets.batch_hold_release(batch_id=response.json()["id"])
    AgentJob.objects.all().delete()
    return response.json()["estimated_cost_usd"]


def reserved_today(user) -> float:
    return budgets.budget_usage_get(user=user)["periods"]["day"]["reserved_usd"]


def test_two_batches_that_fit_alone_but_not_together_the_second_is_refused(paid, user, api, ledger, store):
    estimate = batch_estimate(paid, api)
    paid.BUDGETS = BudgetSettings(user_daily_usd=round(estimate * 1.5, 6))

    first = api.post("/api/agent/batches", BATCH, format="json")
    second = api.post("/api/agent/batches", BATCH, format="json")

    assert first.status_code == 202
    assert reserved_today(user) == pytest.approx(estimate, abs=1e-6)  # held by the first batch
    assert second.status_code == 429 and 0 < int(second["Retry-After"]) <= 86400
    error = second.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert error["details"]["reserved_usd"] == pytest.approx(estimate, abs=1e-6)
    assert error["details"]["needed_usd"] == pytest.approx(estimate, abs=1e-6)
    assert error["details"]["spent_usd"] == 0
    assert AgentJob.objects.count() == 2  # the first batch's jobs only


def test_a_batchs_jobs_reserve_from_its_hold_and_all_get_their_paid_call(
    paid, user, api, ledger, store, paid_llm, django_capture_on_commit_callbacks
):
    estimate = batch_estimate(paid, api)
    paid.BUDGETS = BudgetSettings(user_daily_usd=round(estimate, 6))  # exactly the batch's worst case
    accepted = api.post("/api/agent/batches", BATCH, format="json")
    assert accepted.status_code == 202
    # All of the cap is held for the batch: other work cannot take it meanwhile.
    assert api.post("/api/agent/jobs", {"query": "whales"}, format="json").status_code == 429

    batch_jobs = list(AgentJob.objects.filter(batch_id=accepted.json()["id"]).order_by("created_at"))
    assert job_execution.job_run(job_id=batch_jobs[0].id) == JobStatus.SUCCEEDED
    # The first job's call took its worst case from the hold and settled: the hold shrank by that much.
    assert 0 < reserved_today(user) < estimate
    with django_capture_on_commit_callbacks(execute=True):  # the last job completes the batch
        assert job_execution.job_run(job_id=batch_jobs[1].id) == JobStatus.SUCCEEDED

    for job in batch_jobs:
        job.refresh_from_db()
        assert job.degraded is False and job.cost_usd == Decimal("0.002")
    assert paid_llm.calls == 2
    day = budgets.budget_usage_get(user=user)["periods"]["day"]
    assert day["spent_usd"] == 0.004 and day["reserved_usd"] == 0.0  # the rest of the hold was released


def test_a_cancelled_batch_releases_its_hold(
    paid, user, api, ledger, store, django_capture_on_commit_callbacks
):
    estimate = batch_estimate(paid, api)
    paid.BUDGETS = BudgetSettings(user_daily_usd=estimate * 3)
    batch_id = api.post("/api/agent/batches", BATCH, format="json").json()["id"]
    assert reserved_today(user) == pytest.approx(estimate, abs=1e-6)

    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(f"/api/agent/batches/{batch_id}/cancel").status_code == 202

    assert reserved_today(user) == 0.0
    budgets.batch_hold_release(batch_id=batch_id)  # idempotent
    assert reserved_today(user) == 0.0


def test_a_hold_whose_batch_never_showed_life_ends_with_its_lease(paid, user, ledger, settings):
    """The API process died between the hold and the batch's commit: the hold does not leak for ever."""
    paid.BUDGETS = BudgetSettings(user_daily_usd=1.0)
    settings.AGENT_BATCH_QUEUED_STALE_SEC = 0.05
    decision = jobs.cost_decision_resolve(byo_api_key=None)
    assert budgets.batch_hold(owner=user, decision=decision, batch_id=uuid.uuid4(), amount_usd=0.9)
    assert reserved_today(user) == 0.9

    time.sleep(0.1)

    assert reserved_today(user) == 0.0


def test_the_sweep_renews_the_hold_of_a_running_batch(paid, user, api, ledger, store, settings):
    paid.BUDGETS = BudgetSettings(user_daily_usd=1000.0)
    batch_id = api.post("/api/agent/batches", BATCH, format="json").json()["id"]
    day_key = budgets.budget_caps(owner_id=user.pk)[0].key
    hold = f"hold:batch:{batch_id}"
    leased_until = ledger.zscore(day_key + ":res", hold)
    settings.AGENT_BATCH_QUEUED_STALE_SEC = 7200.0

    assert jobs.jobs_sweep()["holds_renewed"] == 1

    assert ledger.zscore(day_key + ":res", hold) > leased_until + 3600
