"""POST -> poll -> succeeded, through a live API, a real Redis and a real Celery worker process."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def poll_until_terminal(client: httpx.Client, poll_url: str, timeout: float = 60.0) -> dict:
    def terminal():
        body = client.get(poll_url).json()
        return body if body["status"] in {"succeeded", "failed", "cancelled"} else None

    return wait_for(terminal, timeout=timeout, interval=0.2, message=f"{poll_url} to end")


def test_post_poll_succeeds_with_catalogue_results(stack, token):
    stack.start_worker()
    with httpx.Client(
        base_url=stack.live_url, headers={"Authorization": f"Token {token}"}, timeout=10
    ) as client:
        accepted = client.post(
            "/api/agent/jobs", json={"query": "a whaling captain obsessed with a white whale", "top_k": 3}
        )
        assert accepted.status_code == 202, accepted.text
        job = poll_until_terminal(client, accepted.json()["poll_url"])

    assert job["status"] == "succeeded", job
    assert job["degraded"] is False
    titles = [r["title"] for r in job["results"]]
    assert "Moby-Dick" in titles
    assert job["cost"] == {
        "mode": "paid",
        "key_source": "server",
        "provider": "openai_compatible",
        "model": "test-model",
    }
    llm_step = next(step for step in job["trace"] if step["name"] == "llm")
    assert llm_step["error"] is None
    assert llm_step["prompt_tokens"] > 0 and llm_step["completion_tokens"] > 0
    assert llm_step["outputs"]["latency_ms"] > 0
    assert job["vector_store"]["document_count"] >= 300
    # The provider saw our server key and the grounded prompt with Moby-Dick in it.
    calls = stack.llm.requests("/v1/chat/completions")
    assert len(calls) == 1
    assert calls[0]["headers"]["Authorization"] == "Bearer sk-server-e2e"
    assert "Moby-Dick" in str(calls[0]["body"]["messages"])


def test_llm_500_gives_degraded_success(stack, token):
    stack.llm.control(fault="500")
    stack.start_worker()
    with httpx.Client(
        base_url=stack.live_url, headers={"Authorization": f"Token {token}"}, timeout=10
    ) as client:
        accepted = client.post(
            "/api/agent/jobs", json={"query": "novela de realismo mágico en un pueblo", "top_k": 3}
        )
        job = poll_until_terminal(client, accepted.json()["poll_url"])

    assert job["status"] == "succeeded", job
    assert job["degraded"] is True
    llm_step = next(step for step in job["trace"] if step["name"] == "llm")
    assert llm_step["error"]["code"] == "provider_error"
    assert len(job["results"]) == 3
    assert job["message"].startswith("No pude consultar el modelo")
    # One call plus LLM_MAX_RETRIES=1 retry: the budget is respected.
    assert len(stack.llm.requests("/v1/chat/completions")) == 2
