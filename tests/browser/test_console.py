"""The console (/console/) in a real browser against the shipped stack with a streaming provider: sign in,
ask, watch the steps and the answer being written, reload mid-stream and see it resume, cancel.

The LLM test server sends its answer one word at a time with a pause (`stream_delay_ms`), so a stream
lasts long enough to reload or cancel in the middle of it. Screenshots go to var/browser/console-*.png.
"""

from __future__ import annotations

import uuid

import pytest
from selenium.webdriver.common.by import By

from tests.browser.conftest import wait_job
from tests.e2e.harness import wait_for

pytestmark = [pytest.mark.e2e]

#: The provider's answer (120 words) and the pause before each streamed word: ~18 s to write it.
ANSWER = " ".join(
    ["Moby-Dick by Herman Melville follows Ishmael aboard the Pequod, whose captain hunts the white whale."]
    * 8
)
STREAM_DELAY_MS = 150


@pytest.fixture
def console_user(transactional_db, streaming_stack):
    """A plain (non-staff) user with a password and a token, committed so that the API process sees it."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    call_command("loaddata", "libros_prueba", verbosity=0)
    password = uuid.uuid4().hex
    user = get_user_model().objects.create_user(username=f"reader-{uuid.uuid4().hex[:6]}", password=password)
    token = Token.objects.create(user=user).key
    streaming_stack.llm.reset()
    streaming_stack.llm.control(stream_delay_ms=STREAM_DELAY_MS, content=ANSWER)
    yield user, password, token
    streaming_stack.llm.reset()


def sign_in(browser, base: str, username: str, password: str) -> None:
    """Through the console's own login page; the session browser may hold another test's cookies."""
    browser.open(f"{base}/console/login/")
    browser.driver.delete_all_cookies()
    browser.open(f"{base}/console/")
    assert "/console/login/" in browser.driver.current_url  # the page needs a session
    browser.wait_for("#id_username").send_keys(username)
    browser.driver.find_element(By.ID, "id_password").send_keys(password)
    browser.driver.find_element(By.CSS_SELECTOR, "main button[type=submit]").click()
    browser.wait_for("#ask")


def ask(browser, query: str) -> str:
    box = browser.wait_for("#query")
    box.clear()
    box.send_keys(query)
    browser.driver.find_element(By.ID, "ask-button").click()
    browser.wait_for("#job")
    job_id = wait_for(lambda: _hash_job(browser), timeout=15, message="the job id in the URL")
    return job_id


def _hash_job(browser) -> str | None:
    fragment = browser.driver.execute_script("return location.hash")
    return fragment.removeprefix("#job=") if fragment.startswith("#job=") else None


def text(browser, element_id: str) -> str:
    return browser.driver.execute_script(f"return document.getElementById('{element_id}').textContent")


def steps(browser) -> list[str]:
    return [span.text for span in browser.find_all("#steps li .what")]


def status(browser) -> str:
    return text(browser, "job-status")


def job_state(stack, token: str, job_id: str) -> dict:
    with stack.api(token) as client:
        return client.get(f"/api/agent/jobs/{job_id}").json()


def test_ask_watch_the_answer_stream_in_and_resume_after_a_reload(streaming_stack, browser, console_user):
    user, password, token = console_user
    base = streaming_stack.base_url
    sign_in(browser, base, user.username, password)
    browser.screenshot("console-signed-in")

    job_id = ask(browser, "a novel about a whale hunt and obsession at sea")

    # The steps arrive, then the answer is written word by word while the job runs.
    wait_for(lambda: len(text(browser, "answer")) > 40, timeout=60, message="the answer to start")
    first = text(browser, "answer")
    assert status(browser) == "running"
    assert steps(browser)[:3] == ["Queued", "Started", "Found 5 books"], steps(browser)
    assert len(browser.find_all("#books li")) == 5
    wait_for(lambda: len(text(browser, "answer")) > len(first) + 20, timeout=30, message="more answer text")
    browser.screenshot("console-streaming")
    before_reload = text(browser, "answer")
    assert job_state(streaming_stack, token, job_id)["status"] == "running"  # really mid-stream

    # A reload comes back to the job (its id is in the URL), replays what was written, and goes on live.
    browser.driver.refresh()
    wait_for(
        lambda: text(browser, "answer").startswith(before_reload),
        timeout=30,
        message="the answer so far to be rebuilt after the reload",
    )
    assert _hash_job(browser) == job_id
    assert steps(browser)[:3] == ["Queued", "Started", "Found 5 books"], steps(browser)
    resumed = text(browser, "answer")
    assert job_state(streaming_stack, token, job_id)["status"] == "running", "the job ended before the reload"
    wait_for(
        lambda: len(text(browser, "answer")) > len(resumed) + 20,
        timeout=30,
        message="the answer to go on growing after the reload",
    )

    wait_for(lambda: status(browser) == "succeeded", timeout=90, message="the job to succeed in the page")
    job = wait_job(streaming_stack, token, job_id)
    assert job["status"] == "succeeded" and not job["degraded"]
    # What was streamed is the stored answer, and the page ends showing it whole.
    assert job["message"].startswith(before_reload)
    assert text(browser, "answer") == job["message"]
    assert steps(browser)[-2:] == ["Answer written", "Succeeded"], steps(browser)
    assert 'class="answer streaming"' not in browser.driver.page_source  # no blinking cursor at the end

    # The recent jobs list shows it with its status.
    first_row = wait_for(
        lambda: (rows := browser.find_all("#recent li[data-job-id]")) and rows[0],
        timeout=15,
        message="the recent jobs list",
    )
    assert first_row.get_attribute("data-job-id") == job_id
    assert "succeeded" in first_row.text and "whale hunt" in first_row.text
    browser.driver.execute_script("window.scrollTo(0, 0)")
    browser.screenshot("console-answered")

    assert browser.outside_requests(base) == []
    assert browser.console_errors() == []


def test_cancel_a_job_while_its_answer_is_being_written(streaming_stack, browser, console_user):
    user, password, token = console_user
    base = streaming_stack.base_url
    sign_in(browser, base, user.username, password)

    job_id = ask(browser, "science fiction about an ice planet")
    wait_for(lambda: len(text(browser, "answer")) > 20, timeout=60, message="the answer to start")
    # The cancel's response is held back 0.8 s, so that the stream brings the job's end before it (it did
    # once in CI, by chance): the page must still show the request before its outcome.
    browser.driver.execute_script(
        """
        const original = window.fetch;
        window.fetch = (url, options) => {
          const answer = original(url, options);
          if (!String(url).endsWith("/cancel")) return answer;
          return answer.then((response) => new Promise((resolve) => setTimeout(() => resolve(response), 800)));
        };
        """
    )
    browser.driver.find_element(By.ID, "cancel").click()

    wait_for(lambda: status(browser) == "cancelled", timeout=30, message="the page to show the cancel")
    cut = text(browser, "answer")
    job = wait_job(streaming_stack, token, job_id)
    assert job["status"] == "cancelled"
    assert steps(browser)[-2:] == ["Cancel requested", "Cancelled"], steps(browser)
    assert browser.driver.find_element(By.ID, "cancel").is_displayed() is False
    # Nothing more is written once the job is cancelled, and the late answer to the cancel changes nothing.
    browser.settle(1.0)
    assert text(browser, "answer") == cut
    assert steps(browser)[-2:] == ["Cancel requested", "Cancelled"], steps(browser)
    browser.screenshot("console-cancelled")
    row = browser.find_all(f"#recent li[data-job-id='{job_id}']")
    assert row and "cancelled" in row[0].text
    assert browser.console_errors() == []


def test_another_users_job_in_the_url_is_not_shown(streaming_stack, browser, console_user):
    from django.contrib.auth import get_user_model

    from apps.agent.tests.factories import job_make

    user, password, _ = console_user
    stranger = get_user_model().objects.create_user(username=f"other-{uuid.uuid4().hex[:6]}")
    theirs = job_make(stranger)
    sign_in(browser, streaming_stack.base_url, user.username, password)

    browser.open(f"{streaming_stack.base_url}/console/#job={theirs.id}")
    wait_for(lambda: status(browser) == "unknown", timeout=30, message="the page to give up on the job")
    assert "No such job" in text(browser, "job-error")
    assert text(browser, "answer") == ""


def test_a_superseded_attempts_late_events_do_not_change_the_page(streaming_stack, browser, console_user):
    """Attempt 1 was taken over (its worker hung) and woke up after attempt 2 started: its late
    `degraded` must neither add a step nor leave a badge on a job that succeeded without degrading."""
    import json

    import redis as redis_lib

    from apps.agent.models import JobStatus
    from apps.agent.services.job_events import end_key, stream_key
    from apps.agent.tests.factories import BOOK, job_make

    user, password, _ = console_user
    book = BOOK
    result = {"message": "Read Moby-Dick.", "results": [book], "actions": []}
    job = job_make(user, status=JobStatus.SUCCEEDED, result=result, attempts=2, degraded=False)
    events = redis_lib.Redis.from_url(streaming_stack.env["REDIS_URL"], decode_responses=True)
    key = stream_key(job.id)
    for name, data in [
        ("queued", {"status": "queued"}),
        ("started", {"attempt": 1}),
        ("started", {"attempt": 2}),
        ("degraded", {"attempt": 1, "why": "llm_failed", "error": {"code": "timeout", "message": "late"}}),
        ("retrieval", {"attempt": 2, "books": [book], "source": "vector"}),
        ("llm.delta", {"attempt": 2, "text": "Read Moby-Dick."}),
        ("job", {"status": "succeeded"}),
    ]:
        entry = events.xadd(key, {"e": name, "d": json.dumps(data)})
    events.set(end_key(job.id), entry)
    sign_in(browser, streaming_stack.base_url, user.username, password)

    browser.open(f"{streaming_stack.base_url}/console/#job={job.id}")
    wait_for(lambda: status(browser) == "succeeded", timeout=30, message="the job's end")
    assert "Degraded answer" not in steps(browser)
    assert "Started (attempt 2)" in steps(browser)
    assert browser.driver.find_elements(By.ID, "job-degraded") == []
    assert text(browser, "answer") == "Read Moby-Dick."
