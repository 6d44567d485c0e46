"""LLMSettings.from_env: the seed's defaults, parsing, and loud failures that name the variable."""

import pytest

from agent.config import BYO_KEY_HEADER, CostMode, LLMSettings, parse_prices
from agent.errors import ImproperlyConfigured


def test_defaults_are_the_seeds():
    settings = LLMSettings.from_env({})

    assert settings == LLMSettings(
        provider="openai_compatible",
        model="llama-3-8b-instruct",
        base_url=None,
        api_key=None,
        timeout_sec=30.0,
        max_tokens=512,
        max_retries=1,
        cost_mode=CostMode.PAID,
        allow_byo_key=False,
        retry_after_cap_sec=10.0,
        prices={},
        http_pool_size=100,
        rate_rpm=None,
        rate_tpm=None,
    )


def test_every_variable_is_read():
    env = {
        "LLM_PROVIDER": "openai_compatible",
        "LLM_MODEL": "gpt-4o-mini",
        "LLM_BASE_URL": "http://127.0.0.1:8089/v1",
        "LLM_API_KEY": "sk-server",
        "LLM_TIMEOUT_SEC": "12.5",
        "LLM_MAX_TOKENS": "256",
        "LLM_MAX_RETRIES": "0",
        "LLM_COST_MODE": "HYBRID",
        "LLM_ALLOW_BYO_KEY": "true",
        "LLM_RETRY_AFTER_CAP_SEC": "3",
        "LLM_PRICES": "gpt-4o-mini=0.15/0.60, llama-3-8b-instruct=0/0",
        "LLM_HTTP_POOL_SIZE": "500",
        "LLM_RATE_RPM": "600",
        "LLM_RATE_TPM": "150000",
        "LLM_TEMPERATURE": "0.2",
    }

    settings = LLMSettings.from_env(env)

    assert settings.model == "gpt-4o-mini"
    assert settings.base_url == "http://127.0.0.1:8089/v1"
    assert settings.api_key == "sk-server"
    assert settings.timeout_sec == 12.5
    assert settings.max_tokens == 256
    assert settings.max_retries == 0
    assert settings.cost_mode is CostMode.HYBRID
    assert settings.allow_byo_key is True
    assert settings.retry_after_cap_sec == 3.0
    assert settings.prices == {"gpt-4o-mini": (0.15, 0.6), "llama-3-8b-instruct": (0.0, 0.0)}
    assert settings.http_pool_size == 500
    assert (settings.rate_rpm, settings.rate_tpm) == (600, 150000)
    assert settings.temperature == 0.2


@pytest.mark.parametrize("value", ["stub", "local_stub", "test", " STUB "])
def test_stub_aliases_normalise_to_stub(value):
    assert LLMSettings.from_env({"LLM_PROVIDER": value}).provider == "stub"


def test_empty_values_mean_default():
    settings = LLMSettings.from_env(
        {"LLM_BASE_URL": "", "LLM_API_KEY": "  ", "LLM_TIMEOUT_SEC": "", "LLM_TEMPERATURE": ""}
    )

    assert (settings.base_url, settings.api_key, settings.timeout_sec) == (None, None, 30.0)
    assert settings.temperature is None  # the provider's default


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("LLM_MODEL", "from-os-environ")

    assert LLMSettings.from_env().model == "from-os-environ"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LLM_PROVIDER", "anthropic", "one of stub, local_stub, test, openai_compatible"),
        ("LLM_COST_MODE", "free", "one of paid, byo_key, hybrid"),
        ("LLM_TIMEOUT_SEC", "soon", "a number"),
        ("LLM_TIMEOUT_SEC", "0", "a finite number > 0"),
        ("LLM_TIMEOUT_SEC", "nan", "a finite number > 0"),
        ("LLM_MAX_TOKENS", "many", "an integer"),
        ("LLM_MAX_TOKENS", "0", "an integer >= 1"),
        ("LLM_MAX_RETRIES", "-1", "an integer >= 0"),
        ("LLM_ALLOW_BYO_KEY", "maybe", "true or false (also 1/0, yes/no, on/off)"),
        ("LLM_RETRY_AFTER_CAP_SEC", "-2", "a finite number >= 0"),
        ("LLM_HTTP_POOL_SIZE", "0", "an integer >= 1"),
        ("LLM_RATE_RPM", "0", "an integer >= 1"),
        ("LLM_RATE_TPM", "lots", "an integer"),
        ("LLM_PRICES", "gpt-4o-mini=cheap", "comma-separated model=input/output"),
        ("LLM_TEMPERATURE", "warm", "a number"),
        ("LLM_TEMPERATURE", "-0.1", "a number from 0 to 2"),
        ("LLM_TEMPERATURE", "2.5", "a number from 0 to 2"),
        ("LLM_TEMPERATURE", "inf", "a number from 0 to 2"),
    ],
)
def test_bad_values_name_the_variable_and_what_is_allowed(variable, value, expected):
    with pytest.raises(ImproperlyConfigured) as raised:
        LLMSettings.from_env({variable: value})

    message = str(raised.value)
    assert message.startswith(f"{variable}=")
    assert expected in message


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("YES", True), ("on", True), ("0", False), ("off", False)]
)
def test_booleans(raw, expected):
    assert LLMSettings.from_env({"LLM_ALLOW_BYO_KEY": raw}).allow_byo_key is expected


def test_prices_accept_model_names_with_slashes():
    assert parse_prices("meta-llama/Llama-3-8B-Instruct=0.2/0.2") == {
        "meta-llama/Llama-3-8B-Instruct": (0.2, 0.2)
    }


@pytest.mark.parametrize(
    "spec", ["gpt=1", "=1/2", "gpt=1/2/3", "gpt=-1/2", "gpt=1/2,gpt=3/4", "gpt=inf/1", "gpt"]
)
def test_bad_price_specs(spec):
    with pytest.raises(ImproperlyConfigured, match="LLM_PRICES"):
        parse_prices(spec)


def test_api_key_never_in_repr():
    settings = LLMSettings(api_key="sk-very-secret-value")

    assert "sk-very-secret-value" not in repr(settings)


def test_direct_construction_is_validated_too():
    with pytest.raises(ImproperlyConfigured, match="LLM_TIMEOUT_SEC"):
        LLMSettings(timeout_sec=-1)


def test_byo_header_name():
    assert BYO_KEY_HEADER == "X-LLM-API-Key"
