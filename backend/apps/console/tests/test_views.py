"""The console page, its login and logout, and the API as the page calls it (session cookie + CSRF)."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.staticfiles import finders
from django.test import Client

from apps.agent.models import AgentJob, JobStatus

pytestmark = pytest.mark.django_db

PAGE = "/console/"
LOGIN = "/console/login/"


@pytest.fixture
def browser(user) -> Client:
    """A client that behaves like the browser: signed in by the session, CSRF checked as in production."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def api_config(page: str) -> dict:
    match = re.search(r'<script id="console-api" type="application/json">(.*?)</script>', page, re.S)
    assert match, "the page hands the API's URLs to the script"
    return json.loads(match.group(1))


def csrf_from_cookie(client: Client) -> str:
    return client.cookies["csrftoken"].value


# --- the page ---------------------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_the_login_page(client):
    response = client.get(PAGE)
    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN}?next={PAGE}"


def test_the_page_hands_the_script_the_public_api_urls(browser):
    response = browser.get(PAGE)
    assert response.status_code == 200
    page = response.content.decode()
    placeholder = "00000000-0000-0000-0000-000000000000"
    assert api_config(page) == {
        "jobs": "/api/agent/jobs",
        "job": f"/api/agent/jobs/{placeholder}",
        "cancel": f"/api/agent/jobs/{placeholder}/cancel",
        "events": f"/api/agent/jobs/{placeholder}/events",
        "placeholder": placeholder,
        "login": LOGIN,
    }
    assert '<script src="/static/console/console.js" defer></script>' in page
    assert '<link rel="stylesheet" href="/static/console/console.css">' in page
    assert 'id="ask"' in page and 'id="recent"' in page and 'id="cancel"' in page
    assert ">alice<" in page  # who is signed in


def test_the_page_sets_the_csrf_cookie_the_script_sends_back(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert "csrftoken" not in client.cookies
    client.get(PAGE)
    assert len(csrf_from_cookie(client)) >= 32


def test_the_page_runs_no_inline_code_and_loads_nothing_from_elsewhere(browser):
    response = browser.get(PAGE)
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    page = response.content.decode()
    # Every <script> either loads a local file or is JSON data (not executed).
    for tag in re.findall(r"<script[^>]*>", page):
        assert 'type="application/json"' in tag or 'src="/static/' in tag
    assert "http://" not in page and "https://" not in page
    assert "no-cache" in response["Cache-Control"]


def test_static_files_are_found_by_django_staticfiles():
    for name in ("console/console.js", "console/console.css"):
        assert finders.find(name), name


def test_the_script_uses_only_the_public_api():
    with open(finders.find("console/console.js"), encoding="utf-8") as f:
        code = "\n".join(line for line in f.read().splitlines() if not line.strip().startswith("//"))
    assert "new EventSource(" in code and "X-CSRFToken" in code
    # URLs come from the page's data, not from the script (no hard-coded API paths).
    assert "/api/" not in code
    # No HTML built from strings: text goes in through textContent / Text nodes.
    assert "innerHTML" not in code and "insertAdjacentHTML" not in code


# --- login and logout -------------------------------------------------------------------------------


def test_login_page_signs_in_and_returns_to_the_console(user):
    client = Client(enforce_csrf_checks=True)
    form = client.get(f"{LOGIN}?next={PAGE}")
    assert form.status_code == 200 and "Content-Security-Policy" in form
    token = csrf_from_cookie(client)

    bad = client.post(LOGIN, {"username": "alice", "password": "wrong", "csrfmiddlewaretoken": token})
    assert bad.status_code == 200 and "did not match" in bad.content.decode()

    good = client.post(
        LOGIN, {"username": "alice", "password": "pw-alice", "next": PAGE, "csrfmiddlewaretoken": token}
    )
    assert (good.status_code, good["Location"]) == (302, PAGE)
    assert client.get(PAGE).status_code == 200


def test_login_refuses_to_send_the_user_to_another_site(user):
    client = Client()
    response = client.post(
        LOGIN, {"username": "alice", "password": "pw-alice", "next": "https://evil.example.com/"}
    )
    assert (response.status_code, response["Location"]) == (302, PAGE)


def test_logout_is_a_post_and_ends_the_session(browser):
    browser.get(PAGE)
    response = browser.post("/console/logout/", HTTP_X_CSRFTOKEN=csrf_from_cookie(browser))
    assert (response.status_code, response["Location"]) == (302, LOGIN)
    assert browser.get(PAGE).status_code == 302
    assert browser.get("/api/agent/jobs").status_code == 401


# --- the API with the page's credentials ------------------------------------------------------------


def test_the_api_accepts_the_session_and_requires_csrf_on_unsafe_methods(browser):
    browser.get(PAGE)  # sets the CSRF cookie, as the page does

    refused = browser.post("/api/agent/jobs", {"query": "whales"}, content_type="application/json")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"
    assert "CSRF" in refused.json()["error"]["message"]
    assert not AgentJob.objects.exists()

    accepted = browser.post(
        "/api/agent/jobs",
        {"query": "whales"},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=csrf_from_cookie(browser),
    )
    assert accepted.status_code == 202, accepted.content
    job_id = accepted.json()["id"]

    listed = browser.get("/api/agent/jobs?limit=15")
    assert listed.status_code == 200
    assert [row["id"] for row in listed.json()["results"]] == [job_id]
    assert browser.get(f"/api/agent/jobs/{job_id}").json()["status"] == JobStatus.QUEUED


def test_cancel_through_the_session_needs_the_csrf_header_too(browser, user):
    from apps.agent.tests.factories import job_make

    job = job_make(user, status=JobStatus.QUEUED)
    browser.get(PAGE)
    url = f"/api/agent/jobs/{job.id}/cancel"

    # As fetch() sends it: no body, so no Content-Type.
    refused = browser.generic("POST", url)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    response = browser.generic("POST", url, HTTP_X_CSRFTOKEN=csrf_from_cookie(browser))
    assert response.status_code == 202 and response.json()["status"] == JobStatus.CANCELLED


def test_the_session_only_sees_its_own_jobs(browser, other_user):
    from apps.agent.tests.factories import job_make

    theirs = job_make(other_user)
    assert browser.get("/api/agent/jobs").json()["results"] == []
    response = browser.get(f"/api/agent/jobs/{theirs.id}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
