"""The budget core: settings, the worst-case bound, and `BudgetedLLM` around a runnable (no Redis)."""

from __future__ import annotations

import dataclasses

import pytest

from agent.budget import (
    BudgetedLLM,
    BudgetSettings,
    Refusal,
    Reservation,
    check_budget_prices,
    estimate_job_worst_case,
    worst_case_cost,
    worst_case_prompt_tokens,
)
from agent.config import LLMSettings
from agent.errors import Cancelled, ImproperlyConfigured
from agent.llm_factory import StubLLM

PRICE = (1000.0, 2000.0)  # USD per million tokens: 0.001 in, 0.002 out per token


class DictLedger:
    """A ledger in a dict with one cap, to test the wrapper's protocol."""

    def __init__(self, limit: float):
        self.limit = limit
        self.spent = 0.0
        self.reserved: dict[str, float] = {}
        self.calls: list[tuple] = []

    def reserve(self, *, amount_usd, model, lease_sec):
        self.calls.append(("reserve", round(amount_usd, 9), model, lease_sec))
        if self.spent + sum(self.reserved.values()) + amount_usd > self.limit:
            return Refusal("budget_exceeded", "Your daily budget is spent.", {"period": "day"})
        rid = f"r{len(self.calls)}"
        self.reserved[rid] = amount_usd
        return Reservation(rid, amount_usd)

    def settle(self, reservation, *, cost_usd, model, charged):
        self.calls.append(("settle", reservation.id, round(cost_usd, 9), charged))
        del self.reserved[reservation.id]
        if charged:
            self.spent += cost_usd


class PricedStub(StubLLM):
    """The stub, reporting a cost like a paid model would."""

    def invoke(self, prompt, *, deadline=None):
        result = super().invoke(prompt, deadline=deadline)
        return {**result, "cost_usd": 0.01}


MESSAGES = [{"role": "system", "content": "abc"}, {"role": "user", "content": "¿ballenas?"}]


def test_the_prompt_bound_counts_bytes_not_characters():
    # "abc" is 3 bytes, "¿ballenas?" 11 bytes (¿ takes two), 4 per message, 3 to prime the reply.
    assert worst_case_prompt_tokens(MESSAGES) == 3 + 11 + 2 * 4 + 3


def test_worst_case_cost_is_prompt_plus_max_tokens_at_the_price():
    assert worst_case_cost(100, 50, PRICE) == pytest.approx(0.1 + 0.1)


def test_a_call_reserves_its_worst_case_then_settles_its_real_cost():
    ledger = DictLedger(limit=1.0)
    llm = BudgetedLLM(PricedStub(model="m"), ledger, price=PRICE, max_tokens=10, lease_margin_sec=5)

    result = llm.invoke(MESSAGES, deadline=20)

    assert result["error"] is None and result["content"]
    worst = round((25 * 1000 + 10 * 2000) / 1_000_000, 9)
    assert ledger.calls == [("reserve", worst, "m", 25), ("settle", "r1", 0.01, True)]
    assert ledger.spent == pytest.approx(0.01) and ledger.reserved == {}


def test_a_call_that_does_not_fit_is_not_made_and_says_why():
    ledger = DictLedger(limit=0.01)
    inner = PricedStub(model="m")
    inner.invoke = lambda *a, **k: pytest.fail("the paid call was made")
    llm = BudgetedLLM(inner, ledger, price=PRICE, max_tokens=10)

    result = llm.invoke(MESSAGES, deadline=20)

    assert result["error"] == {
        "code": "budget_exceeded",
        "message": "Your daily budget is spent.",
        "details": {"period": "day"},
    }
    assert result["cost_usd"] == 0.0 and result["content"] == ""
    assert [c[0] for c in ledger.calls] == ["reserve"]


def test_a_failed_call_releases_its_reservation_without_charging():
    ledger = DictLedger(limit=1.0)

    class Failing(StubLLM):
        def invoke(self, prompt, *, deadline=None):
            return {**super().invoke(prompt), "error": {"code": "timeout", "message": "t"}, "cost_usd": 0.0}

    BudgetedLLM(Failing(model="m"), ledger, price=PRICE, max_tokens=10).invoke(MESSAGES, deadline=1)

    assert ledger.calls[-1] == ("settle", "r1", 0.0, False)
    assert ledger.spent == 0 and ledger.reserved == {}


def test_an_exception_in_the_call_releases_the_reservation_and_propagates():
    ledger = DictLedger(limit=1.0)

    class Crashing(StubLLM):
        def invoke(self, prompt, *, deadline=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        BudgetedLLM(Crashing(model="m"), ledger, price=PRICE, max_tokens=10).invoke(MESSAGES, deadline=1)
    assert ledger.reserved == {} and ledger.calls[-1] == ("settle", "r1", 0.0, False)


def test_a_streamed_call_reserves_and_settles_exactly_as_an_invoked_one():
    invoked, streamed = DictLedger(limit=1.0), DictLedger(limit=1.0)
    BudgetedLLM(PricedStub(model="m"), invoked, price=PRICE, max_tokens=10).invoke(MESSAGES, deadline=20)
    deltas: list[str] = []

    result = BudgetedLLM(PricedStub(model="m"), streamed, price=PRICE, max_tokens=10).stream(
        MESSAGES, on_delta=deltas.append, deadline=20
    )

    assert streamed.calls == invoked.calls
    assert "".join(deltas) == result["content"] and len(deltas) > 1


def test_a_stream_stopped_by_a_cancel_charges_what_the_call_cost_so_far():
    ledger = DictLedger(limit=1.0)

    def cancel_after_two(text, seen=[]):  # noqa: B006 - the deltas seen so far
        seen.append(text)
        if len(seen) == 2:
            raise Cancelled("The job was cancelled.")

    # PricedStub makes its whole (priced) call before its words are streamed: all of it was paid.
    llm = BudgetedLLM(PricedStub(model="m"), ledger, price=PRICE, max_tokens=10)
    with pytest.raises(Cancelled) as cancel:
        llm.stream(MESSAGES, on_delta=cancel_after_two, deadline=20)

    assert cancel.value.llm_result["cost_usd"] == 0.01
    assert ledger.calls[-1] == ("settle", "r1", 0.01, True)
    assert ledger.spent == pytest.approx(0.01) and ledger.reserved == {}


def test_a_stream_stopped_before_any_call_was_made_charges_nothing():
    ledger = DictLedger(limit=1.0)

    class Interrupted(StubLLM):
        def invoke(self, prompt, *, deadline=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        BudgetedLLM(Interrupted(model="m"), ledger, price=PRICE, max_tokens=10).stream(
            MESSAGES, on_delta=lambda text: None, deadline=20
        )
    assert ledger.calls[-1] == ("settle", "r1", 0.0, False) and ledger.spent == 0


def test_a_failed_call_that_cost_something_is_charged():
    # A stream that broke after text arrived: an error, and the cost of the text the provider sent.
    ledger = DictLedger(limit=1.0)

    class BrokeMidStream(StubLLM):
        def invoke(self, prompt, *, deadline=None):
            error = {"code": "connection_error", "message": "broke off (after 3 streamed chunk(s))"}
            return {**super().invoke(prompt), "error": error, "cost_usd": 0.003}

    BudgetedLLM(BrokeMidStream(model="m"), ledger, price=PRICE, max_tokens=10).invoke(MESSAGES, deadline=1)

    assert ledger.calls[-1] == ("settle", "r1", 0.003, True) and ledger.spent == pytest.approx(0.003)


def test_an_unpriced_model_is_refused_without_asking_the_ledger():
    ledger = DictLedger(limit=100.0)

    result = BudgetedLLM(StubLLM(model="m"), ledger, price=None, max_tokens=10).invoke(MESSAGES)

    assert result["error"]["code"] == "budget_unpriced_model"
    assert "'m' has no price in LLM_PRICES" in result["error"]["message"]
    assert ledger.calls == []


def test_budget_settings_read_the_environment_and_name_a_bad_variable():
    settings = BudgetSettings.from_env({"BUDGET_USER_DAILY_USD": "2.5", "BUDGET_GLOBAL_MONTHLY_USD": " "})
    assert settings == BudgetSettings(user_daily_usd=2.5)
    assert settings.any_set and not BudgetSettings().any_set

    with pytest.raises(ImproperlyConfigured, match="BUDGET_USER_MONTHLY_USD='lots'"):
        BudgetSettings.from_env({"BUDGET_USER_MONTHLY_USD": "lots"})
    with pytest.raises(ImproperlyConfigured, match="BUDGET_GLOBAL_DAILY_USD=-1"):
        BudgetSettings(global_daily_usd=-1)


def test_start_up_refuses_a_budget_over_an_unpriced_server_model():
    llm = LLMSettings(provider="openai_compatible", model="gpt-x", api_key="sk-server")
    with pytest.raises(ImproperlyConfigured, match="LLM_MODEL='gpt-x' has no price in LLM_PRICES"):
        check_budget_prices(BudgetSettings(user_daily_usd=1), llm)

    # Fine: a price, no budget, only user keys, or the stub.
    check_budget_prices(BudgetSettings(user_daily_usd=1), dataclasses.replace(llm, prices={"gpt-x": PRICE}))
    check_budget_prices(BudgetSettings(), llm)
    check_budget_prices(BudgetSettings(user_daily_usd=1), dataclasses.replace(llm, cost_mode="byo_key"))
    check_budget_prices(BudgetSettings(user_daily_usd=1), dataclasses.replace(llm, provider="stub"))


def test_a_job_estimate_bounds_a_prompt_with_top_k_books():
    one = estimate_job_worst_case("whales", 1, 100, PRICE)
    five = estimate_job_worst_case("whales", 5, 100, PRICE)

    assert five > one > worst_case_cost(0, 100, PRICE)
    assert five - one == pytest.approx(4 * 1200 * PRICE[0] / 1_000_000)
