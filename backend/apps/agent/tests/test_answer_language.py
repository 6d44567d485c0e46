"""The answer language through the API: the `language` option, Accept-Language, detection, and the trace."""

from __future__ import annotations

import pytest

from apps.agent.models import AgentJob

pytestmark = pytest.mark.django_db

JOBS = "/api/agent/jobs"
SYNC = "/api/agent/"
SPANISH_INTRO = "Según el catálogo, te recomiendo:"
ENGLISH_INTRO = "From the catalogue, I recommend:"


def run_job(api, capture, body, **headers):
    with capture(execute=True):
        response = api.post(JOBS, body, format="json", headers=headers)
    assert response.status_code == 202, response.json()
    return api.get(f"{JOBS}/{response.json()['id']}").json()


def prompt_step(trace):
    return next(step for step in trace if step["name"] == "prompt")


@pytest.mark.parametrize("query", ["space opera", "cozy murder mysteries"])
def test_a_short_english_question_is_answered_in_english(
    api, store, django_capture_on_commit_callbacks, query
):
    job = run_job(api, django_capture_on_commit_callbacks, {"query": query, "top_k": 2})
    assert job["status"] == "succeeded"
    assert job["message"].startswith(ENGLISH_INTRO)
    inputs = prompt_step(job["trace"])["inputs"]
    assert inputs["language"] == "en"
    assert inputs["language_source"] == "detected"
    assert inputs["language_detected"] == "en"


def test_the_language_option_wins_and_is_recorded(api, store, django_capture_on_commit_callbacks):
    job = run_job(
        api,
        django_capture_on_commit_callbacks,
        {"query": "space opera", "top_k": 2, "language": "es"},
        **{"Accept-Language": "en"},
    )
    assert job["message"].startswith(SPANISH_INTRO)
    assert job["options"]["language"] == "es"
    assert job["options"]["language_source"] == "option"
    inputs = prompt_step(job["trace"])["inputs"]
    assert (inputs["language"], inputs["language_source"], inputs["language_detected"]) == (
        "es",
        "option",
        "en",
    )


def test_accept_language_decides_without_the_option(api, store, django_capture_on_commit_callbacks):
    job = run_job(
        api,
        django_capture_on_commit_callbacks,
        {"query": "novela negra", "top_k": 2},
        **{"Accept-Language": "fr;q=1, en-US;q=0.8, es;q=0.5"},
    )
    assert job["message"].startswith(ENGLISH_INTRO)
    inputs = prompt_step(job["trace"])["inputs"]
    assert (inputs["language"], inputs["language_source"], inputs["language_detected"]) == (
        "en",
        "header",
        "es",
    )


def test_an_unsupported_accept_language_leaves_it_to_detection(
    api, store, django_capture_on_commit_callbacks
):
    job = run_job(
        api,
        django_capture_on_commit_callbacks,
        {"query": "novela negra", "top_k": 2},
        **{"Accept-Language": "fr, de"},
    )
    assert job["message"].startswith(SPANISH_INTRO)
    assert "language" not in job["options"]
    assert prompt_step(job["trace"])["inputs"]["language_source"] == "detected"


def test_a_query_without_evidence_gets_the_default(api, store, django_capture_on_commit_callbacks):
    job = run_job(api, django_capture_on_commit_callbacks, {"query": "1984", "top_k": 2})
    inputs = prompt_step(job["trace"])["inputs"]
    assert (inputs["language"], inputs["language_source"], inputs["language_detected"]) == (
        "es",
        "default",
        None,
    )


@pytest.mark.parametrize("language", ["fr", "EN", "", 3])
def test_an_unknown_language_option_is_400(api, store, language):
    response = api.post(JOBS, {"query": "space opera", "language": language}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "language" in error["details"]
    assert AgentJob.objects.count() == 0


def test_the_sync_endpoint_takes_the_option_and_the_header(api, store):
    by_option = api.post(SYNC, {"query": "space opera", "top_k": 1, "language": "es"}, format="json").json()
    assert by_option["message"].startswith(SPANISH_INTRO)
    assert prompt_step(by_option["trace"])["inputs"]["language_source"] == "option"

    by_header = api.post(
        SYNC, {"query": "novela negra", "top_k": 1}, format="json", headers={"Accept-Language": "en"}
    ).json()
    assert by_header["message"].startswith(ENGLISH_INTRO)
    assert prompt_step(by_header["trace"])["inputs"]["language_source"] == "header"

    detected = api.post(SYNC, {"query": "cozy murder mysteries", "top_k": 1}, format="json").json()
    assert detected["message"].startswith(ENGLISH_INTRO)
    assert prompt_step(detected["trace"])["inputs"]["language_source"] == "detected"
