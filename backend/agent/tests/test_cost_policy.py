"""resolve_cost_decision: paid | byo_key | hybrid, exactly as the seed states them."""

import logging

import pytest

from agent.config import LLMSettings
from agent.cost_policy import CostDecision, resolve_cost_decision, select_api_key
from agent.errors import ImproperlyConfigured

SERVER_KEY = "sk-server-key-0001"
USER_KEY = "sk-user-key-0002"


def settings(**overrides):
    values = {"provider": "openai_compatible", "model": "gpt-4o-mini", "api_key": SERVER_KEY}
    values.update(overrides)
    return LLMSettings(**values)


def test_paid_uses_the_server_key_and_ignores_the_users():
    given = settings(cost_mode="paid")

    decision = resolve_cost_decision(USER_KEY, given)

    assert decision == CostDecision(
        mode="paid", key_source="server", provider="openai_compatible", model="gpt-4o-mini"
    )
    assert select_api_key(decision, USER_KEY, given) == SERVER_KEY


def test_paid_without_server_key_falls_back_to_stub_with_one_warning(caplog):
    caplog.set_level(logging.WARNING, logger="agent.cost_policy")

    decision = resolve_cost_decision(None, settings(cost_mode="paid", api_key=None))

    assert decision == CostDecision(mode="paid", key_source="none", provider="stub", model="stub")
    assert len(caplog.records) == 1
    assert caplog.records[0].levelno == logging.WARNING
    assert "using the stub LLM" in caplog.records[0].getMessage()


def test_byo_key_uses_the_users_key():
    given = settings(cost_mode="byo_key")

    decision = resolve_cost_decision(USER_KEY, given)

    assert decision == CostDecision(
        mode="byo_key", key_source="user", provider="openai_compatible", model="gpt-4o-mini"
    )
    assert select_api_key(decision, USER_KEY, given) == USER_KEY


@pytest.mark.parametrize("missing", [None, "", "   "])
def test_byo_key_without_user_key_raises_naming_the_header(missing):
    with pytest.raises(ImproperlyConfigured) as raised:
        resolve_cost_decision(missing, settings(cost_mode="byo_key"))

    assert (
        str(raised.value)
        == "LLM_COST_MODE=byo_key: the user's API key is required in the X-LLM-API-Key header."
    )


@pytest.mark.parametrize(
    ("allow", "user_key", "server_key", "expected_source", "expected_provider"),
    [
        (True, USER_KEY, SERVER_KEY, "user", "openai_compatible"),
        (True, None, SERVER_KEY, "server", "openai_compatible"),
        (False, USER_KEY, SERVER_KEY, "server", "openai_compatible"),
        (False, None, SERVER_KEY, "server", "openai_compatible"),
        (True, USER_KEY, None, "user", "openai_compatible"),
        (True, None, None, "none", "stub"),
        (False, USER_KEY, None, "none", "stub"),
        (False, None, None, "none", "stub"),
    ],
)
def test_hybrid(allow, user_key, server_key, expected_source, expected_provider):
    given = settings(cost_mode="hybrid", allow_byo_key=allow, api_key=server_key)

    decision = resolve_cost_decision(user_key, given)

    assert (decision.mode, decision.key_source, decision.provider) == (
        "hybrid",
        expected_source,
        expected_provider,
    )
    expected_key = {"user": user_key, "server": server_key, "none": None}[expected_source]
    assert select_api_key(decision, user_key, given) == expected_key


@pytest.mark.parametrize("mode", ["paid", "hybrid"])
def test_stub_provider_is_always_the_stub_and_uses_no_key(mode):
    given = settings(provider="stub", cost_mode=mode, allow_byo_key=True)

    decision = resolve_cost_decision(USER_KEY, given)

    assert decision == CostDecision(mode=mode, key_source="none", provider="stub", model="stub")
    assert select_api_key(decision, USER_KEY, given) is None


def test_stub_provider_still_requires_the_header_in_byo_key_mode():
    with pytest.raises(ImproperlyConfigured, match="X-LLM-API-Key"):
        resolve_cost_decision(None, settings(provider="stub", cost_mode="byo_key"))


def test_decision_never_holds_a_key():
    decision = resolve_cost_decision(USER_KEY, settings(cost_mode="byo_key"))

    assert decision.to_dict() == {
        "mode": "byo_key",
        "key_source": "user",
        "provider": "openai_compatible",
        "model": "gpt-4o-mini",
    }
    assert USER_KEY not in repr(decision)
