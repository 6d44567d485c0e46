"""What a new user meets, in a real browser (headless Chromium), against the stack as `make up` runs it:
gunicorn serving the API and its static files, a real worker, Redis. One browser for the session; each
page is checked for what a user sees, and for loading nothing from outside the host. A screenshot of each
page is saved under var/browser/."""

from __future__ import annotations

import json

import pytest
from selenium.webdriver.common.by import By

from tests.browser.conftest import wait_job
from tests.e2e.harness import wait_for

pytestmark = [pytest.mark.e2e]


def test_swagger_ui_lists_the_operations_and_try_it_out_submits_a_job(shipped_stack, browser, demo_user):
    browser.open(f"{shipped_stack.base_url}/api/docs/")
    browser.wait_for("#operations-agent-agent_jobs_create")
    operations = browser.find_all(".opblock")
    assert len(operations) >= 15, len(operations)
    browser.screenshot("swagger")

    # Authorize with the token, as the page invites a user to.
    browser.wait_for("button.authorize").click()
    container = next(c for c in browser.find_all(".auth-container") if "tokenAuth" in c.text)
    container.find_element(By.CSS_SELECTOR, "input").send_keys(f"Token {demo_user.token}")
    container.find_element(By.CSS_SELECTOR, "button.authorize").click()
    browser.wait_for("button.btn-done").click()

    wait_for(lambda: not browser.find_all(".dialog-ux"), timeout=10, message="the modal to close")
    browser.click("#operations-agent-agent_jobs_create button.opblock-summary-control")
    browser.wait_for("#operations-agent-agent_jobs_create .opblock-body")
    browser.click("#operations-agent-agent_jobs_create button.try-out__btn")
    body = browser.wait_for("#operations-agent-agent_jobs_create textarea.body-param__text")
    body.clear()
    body.send_keys(json.dumps({"query": "a whaling captain obsessed with a white whale", "top_k": 3}))
    browser.click("#operations-agent-agent_jobs_create button.execute")
    status = browser.wait_for(
        "#operations-agent-agent_jobs_create .live-responses-table tbody tr.response .response-col_status"
    )
    browser.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", status)
    browser.screenshot("swagger-try-it-out")
    assert status.text.strip().startswith("202"), status.text
    answer = browser.wait_for(
        "#operations-agent-agent_jobs_create .live-responses-table tbody .response-col_description .microlight"
    ).text
    job = wait_job(shipped_stack, demo_user.token, json.loads(answer)["id"])
    assert job["status"] == "succeeded"
    assert job["results"], job  # the worker answered from the real store
    assert browser.outside_requests(shipped_stack.base_url) == []


def test_redoc_renders_and_loads_nothing_from_outside(shipped_stack, browser):
    browser.open(f"{shipped_stack.base_url}/api/redoc/")
    browser.wait_for(".api-content h1")
    browser.wait_for("[data-section-id='operation/agent_jobs_create']", visible=False)
    assert len(browser.find_all(".api-content [data-section-id^='operation/']")) >= 15
    assert "Librarian API" in browser.wait_for(".api-content h1").text
    browser.settle()
    browser.screenshot("redoc")
    requested = browser.collect_requests()
    assert any("/static/drf_spectacular_sidecar/redoc/" in url for url in requested), requested
    assert browser.outside_requests(shipped_stack.base_url) == []


def test_the_admin_login_page_has_its_styles_and_logs_in(shipped_stack, browser, demo_user):
    browser.open(f"{shipped_stack.base_url}/admin/login/")
    browser.wait_for("#login-form")
    header_background = browser.driver.execute_script(
        "return getComputedStyle(document.querySelector('#header')).backgroundColor"
    )
    sheets = browser.driver.execute_script(
        "return Array.from(document.styleSheets).filter(s => s.href).map(s => [s.href, s.cssRules.length])"
    )
    browser.screenshot("admin-login")
    assert header_background not in ("rgba(0, 0, 0, 0)", "transparent"), header_background
    assert sheets and all(rules > 0 for _, rules in sheets), sheets
    assert browser.outside_requests(shipped_stack.base_url) == []

    browser.driver.find_element(By.ID, "id_username").send_keys(demo_user.username)
    browser.driver.find_element(By.ID, "id_password").send_keys(demo_user.password)
    browser.driver.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    browser.wait_for("#site-name")
    assert browser.driver.current_url.rstrip("/").endswith("/admin")


def test_the_batch_report_page_renders_its_tables_and_charts(shipped_stack, browser, demo_user):
    with shipped_stack.api(demo_user.token) as api:
        created = api.post(
            "/api/agent/batches", json={"queries": ["space opera", "a white whale", "cozy murder mysteries"]}
        )
        assert created.status_code == 202, created.text
        batch_id = created.json()["id"]
        wait_for(
            lambda: api.get(f"/api/agent/batches/{batch_id}").json()["status"] == "completed",
            timeout=60,
            interval=0.3,
            message="the batch to complete",
        )
    # The browser signs in through the admin (session cookie), as a user reading a report would.
    browser.open(f"{shipped_stack.base_url}/admin/login/?next=/admin/")
    if browser.find_all("#login-form"):
        browser.driver.find_element(By.ID, "id_username").send_keys(demo_user.username)
        browser.driver.find_element(By.ID, "id_password").send_keys(demo_user.password)
        browser.driver.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
        browser.wait_for("#site-name")

    browser.open(f"{shipped_stack.base_url}/api/agent/batches/{batch_id}/report?format=html")
    browser.wait_for("table")
    browser.screenshot("batch-report")
    rows = [r.text for r in browser.find_all("table tbody tr")]
    assert sum("space opera" in r or "white whale" in r or "cozy murder" in r for r in rows) == 3, rows
    charts = browser.find_all("svg")
    assert len(charts) >= 2
    assert all(chart.find_elements(By.CSS_SELECTOR, "rect") for chart in charts)
    assert all(chart.size["width"] > 100 and chart.size["height"] > 20 for chart in charts)
    assert browser.outside_requests(shipped_stack.base_url) == []
