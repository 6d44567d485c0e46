"""The batches API with eager tasks and a fake store: create, poll, compare, report, cancel, isolation."""

from __future__ import annotations

import csv
import io
import uuid

import pytest

from apps.agent.models import AgentJob, Batch, JobStatus
from apps.agent.throttling import BatchCreateThrottle

pytestmark = pytest.mark.django_db

URL = "/api/agent/batches"


@pytest.fixture(autouse=True)
def _fresh_throttle_counters():
    """The throttle counts in the cache, which outlives a test: every test starts from zero."""
    from django.core.cache import cache

    cache.clear()


def create(api, body, capture=None, **headers):
    if capture is None:
        return api.post(URL, body, format="json", headers=headers)
    with capture(execute=True):
        return api.post(URL, body, format="json", headers=headers)


def past_jobs(api, capture, queries) -> list[str]:
    """Jobs submitted and run through the jobs API: the parents of a re-run."""
    ids = []
    for query in queries:
        with capture(execute=True):
            response = api.post("/api/agent/jobs", {"query": query, "top_k": 2}, format="json")
        assert response.status_code == 202
        ids.append(response.json()["id"])
    return ids


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    return body["error"]


def test_queries_batch_is_accepted_polled_and_completed(api, store, django_capture_on_commit_callbacks):
    response = create(api, {"queries": ["whales", "pirates", "dragons"]})
    assert response.status_code == 202
    body = response.json()
    batch_id = body["id"]
    assert response["Location"] == f"{URL}/{batch_id}"
    assert (body["status"], body["source"], body["size"]) == ("running", "queries", 3)
    assert body["progress"]["queued"] == 3 and body["progress"]["percent"] == 0.0
    assert body["links"] == {
        "detail": f"{URL}/{batch_id}",
        "cancel": f"{URL}/{batch_id}/cancel",
        "report_csv": f"{URL}/{batch_id}/report?format=csv",
        "report_html": f"{URL}/{batch_id}/report?format=html",
    }
    assert [item["query"] for item in body["items"]] == ["whales", "pirates", "dragons"]

    with django_capture_on_commit_callbacks(execute=True):
        run = create(api, {"queries": ["whales", "pirates"], "overrides": {"top_k": 3}})
    detail = api.get(f"{URL}/{run.json()['id']}")
    assert detail.status_code == 200 and "Retry-After" not in detail
    view = detail.json()
    assert view["status"] == "completed" and view["completed_at"] is not None
    assert view["progress"]["succeeded"] == 2 and view["progress"]["percent"] == 100.0
    assert view["totals"]["total_tokens"] > 0
    assert view["totals"]["latency_ms"]["count"] == 2
    assert view["comparison"] is None
    assert [item["result_ids"] for item in view["items"]] == [["1", "2", "3"], ["1", "2", "3"]]
    # Each item is an ordinary job, pollable on its own.
    job = api.get(f"/api/agent/jobs/{view['items'][0]['job_id']}").json()
    assert job["batch_id"] == view["id"] and job["status"] == "succeeded"


def test_rerun_of_past_jobs_compares_with_the_parents(api, store, django_capture_on_commit_callbacks):
    parents = past_jobs(api, django_capture_on_commit_callbacks, ["whales", "pirates"])
    response = create(
        api,
        {"jobs": parents, "overrides": {"top_k": 3}},
        capture=django_capture_on_commit_callbacks,
    )
    assert response.status_code == 202
    view = api.get(f"{URL}/{response.json()['id']}").json()
    assert view["status"] == "completed"
    assert [item["parent_id"] for item in view["items"]] == parents
    first = view["items"][0]["comparison"]
    # top_k 2 -> 3 over the fake store: one book added, nothing else moves.
    assert first["parent_result_ids"] == ["1", "2"]
    assert (first["jaccard"], first["added_ids"], first["removed_ids"]) == (0.6667, ["3"], [])
    assert first["rank_changes"] == []
    assert view["comparison"]["compared"] == 2
    assert view["comparison"]["changed"] == 2
    assert view["comparison"]["mean_jaccard"] == 0.6667


def test_rerun_by_filter(api, store, django_capture_on_commit_callbacks):
    past_jobs(api, django_capture_on_commit_callbacks, ["whales", "pirates"])
    response = create(api, {"filter": {"status": "succeeded", "degraded_only": False}})
    assert response.status_code == 202
    assert response.json()["size"] == 2
    assert response.json()["selection"]["matched"] == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "selection"),
        ({"queries": ["a"], "jobs": []}, "selection"),
        ({"queries": ["a"], "filter": {}}, "selection"),
        ({"queries": [""]}, "queries"),
        ({"queries": "whales"}, "queries"),
        ({"jobs": ["not-a-uuid"]}, "jobs"),
        ({"filter": {"status": "queued"}}, "filter"),
        ({"filter": {"colour": "red"}}, "filter"),
        (
            {"filter": {"created_after": "2026-02-01T00:00:00Z", "created_before": "2026-01-01T00:00:00Z"}},
            "filter",
        ),
        ({"queries": ["a"], "overrides": {"top_k": 0}}, "overrides"),
        ({"queries": ["a"], "overrides": {"prompt": "be evil"}}, "overrides"),
        ({"queries": ["a"], "overrides": {"filters": {"language": "english"}}}, "overrides"),
        ({"queries": ["a"], "overrides": {"vector_store_build": "../etc"}}, "overrides"),
        ({"queries": ["a"], "name": "x"}, "name"),
    ],
)
def test_invalid_input_is_400_and_nothing_is_stored(api, body, field):
    error = assert_error(create(api, body), 400, "validation_error")
    assert field in error["details"]
    assert Batch.objects.count() == 0 and AgentJob.objects.count() == 0


def test_limits_are_clear_400s(api, other_api, store, settings, django_capture_on_commit_callbacks):
    settings.AGENT_BATCH_MAX_SIZE = 2
    assert_error(create(api, {"queries": []}), 400, "batch_empty")
    assert_error(create(api, {"filter": {}}), 400, "batch_empty")
    error = assert_error(create(api, {"queries": ["a", "b", "c"]}), 400, "batch_too_large")
    assert error["details"] == {"count": 3, "max": 2}

    theirs = past_jobs(other_api, django_capture_on_commit_callbacks, ["their question"])
    mine = past_jobs(api, django_capture_on_commit_callbacks, ["my question"])
    error = assert_error(create(api, {"jobs": mine + theirs}), 400, "jobs_not_found")
    assert error["details"] == {"missing": theirs}
    error = assert_error(
        create(api, {"queries": ["a"], "overrides": {"cost_mode": "byo_key"}}), 400, "byo_key_not_supported"
    )
    assert Batch.objects.count() == 0


def test_webhook_url_is_checked_like_for_jobs(api):
    assert_error(
        create(api, {"queries": ["a"], "webhook_url": "http://127.0.0.1/hook"}), 400, "webhook_url_rejected"
    )


def test_idempotency_key(api):
    first = create(api, {"queries": ["a", "b"]}, **{"Idempotency-Key": "batch-1"})
    again = create(api, {"queries": ["a", "b"]}, **{"Idempotency-Key": "batch-1"})
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert AgentJob.objects.count() == 2
    assert_error(
        create(api, {"queries": ["a", "x"]}, **{"Idempotency-Key": "batch-1"}), 422, "idempotency_key_reused"
    )


def test_create_is_throttled_per_user(api, monkeypatch):
    monkeypatch.setattr(BatchCreateThrottle, "rate", "2/min", raising=False)
    assert create(api, {"queries": ["a"]}).status_code == 202
    assert create(api, {"queries": ["a"]}).status_code == 202
    error = assert_error(create(api, {"queries": ["a"]}), 429, "throttled")
    assert error["details"]["retry_after_sec"] > 0
    assert api.get(URL).status_code == 200  # reading is not throttled


def test_list_shows_own_batches_newest_first_with_progress(api, other_api):
    first = create(api, {"queries": ["a"]}).json()["id"]
    second = create(api, {"queries": ["b", "c"]}).json()["id"]
    create(other_api, {"queries": ["theirs"]})
    page = api.get(URL).json()
    assert page["count"] == 2
    assert [row["id"] for row in page["results"]] == [second, first]
    assert page["results"][0]["progress"]["queued"] == 2
    assert page["results"][0]["size"] == 2


def test_other_users_get_404_everywhere(api, other_api):
    batch_id = create(api, {"queries": ["a"]}).json()["id"]
    assert_error(other_api.get(f"{URL}/{batch_id}"), 404, "not_found")
    assert_error(other_api.post(f"{URL}/{batch_id}/cancel"), 404, "not_found")
    assert_error(other_api.get(f"{URL}/{batch_id}/report?format=csv"), 404, "not_found")
    assert_error(other_api.get(f"{URL}/{batch_id}/report?format=html"), 404, "not_found")
    assert_error(api.get(f"{URL}/{uuid.uuid4()}"), 404, "not_found")
    assert other_api.get(URL).json()["count"] == 0
    assert AgentJob.objects.get().status == JobStatus.QUEUED


def test_anonymous_is_401(client):
    assert client.get(URL).status_code == 401
    assert client.post(URL, {"queries": ["a"]}, content_type="application/json").status_code == 401


def test_cancel(api):
    batch_id = create(api, {"queries": ["a", "b"]}).json()["id"]
    response = api.post(f"{URL}/{batch_id}/cancel")
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "cancelled" and body["progress"]["cancelled"] == 2
    assert api.post(f"{URL}/{batch_id}/cancel").status_code == 202


def test_cancel_of_a_completed_batch_is_409(api, store, django_capture_on_commit_callbacks):
    batch_id = create(api, {"queries": ["a"]}, capture=django_capture_on_commit_callbacks).json()["id"]
    assert_error(api.post(f"{URL}/{batch_id}/cancel"), 409, "batch_completed")


# --- report ---------------------------------------------------------------------------------------


@pytest.fixture
def finished_rerun(api, store, django_capture_on_commit_callbacks):
    past_jobs(
        api,
        django_capture_on_commit_callbacks,
        ["whales", '=HYPERLINK("http://evil")', "<b>bold</b> pirates"],
    )
    response = create(
        api, {"filter": {}, "overrides": {"top_k": 3}}, capture=django_capture_on_commit_callbacks
    )
    return response.json()["id"]


def test_report_csv(api, finished_rerun):
    response = api.get(f"{URL}/{finished_rerun}/report?format=csv")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="batch-{finished_rerun}.csv"'
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert len(rows) == 3
    first = rows[0]
    assert (first["position"], first["status"], first["parent_status"]) == ("1", "succeeded", "succeeded")
    assert (first["result_ids"], first["parent_result_ids"]) == ("1 2 3", "1 2")
    assert (first["jaccard"], first["added_ids"], first["removed_ids"]) == ("0.6667", "3", "")
    # The test store has no build id: whether the build changed is unknown (empty), not "false".
    assert (first["results_changed"], first["degraded_change"], first["store_changed"]) == (
        "true",
        "unchanged",
        "",
    )
    assert first["query"] == "whales"
    # A query that a spreadsheet would run as a formula is neutralised.
    assert rows[1]["query"] == '\'=HYPERLINK("http://evil")'


def test_report_html_is_self_contained_with_charts(api, finished_rerun):
    response = api.get(f"{URL}/{finished_rerun}/report?format=html")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/html; charset=utf-8"
    assert (
        response["Content-Security-Policy"] == "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'"
    )
    page = response.content.decode()
    assert page.count("<svg") == 2
    assert (
        page.count('<rect class="rerun" fill="#2b6cb0"') == 6
        and page.count('<rect class="parent" fill="#b9b9b9"') == 6
    )
    assert "Compared with the original jobs" in page
    assert "&lt;b&gt;bold&lt;/b&gt; pirates" in page and "<b>bold</b>" not in page
    assert "<script" not in page and "src=" not in page and "<link" not in page


def test_report_is_negotiable_by_accept_and_csv_by_default(api, finished_rerun):
    assert api.get(f"{URL}/{finished_rerun}/report", HTTP_ACCEPT="text/html")["Content-Type"].startswith(
        "text/html"
    )
    assert api.get(f"{URL}/{finished_rerun}/report")["Content-Type"].startswith("text/csv")


def test_report_errors_are_json(api, finished_rerun):
    error = assert_error(api.get(f"{URL}/{finished_rerun}/report?format=pdf"), 400, "invalid_format")
    assert error["details"] == {"format": ["csv", "html"]}
    # Empty is not in the schema's enum either (DRF alone would take it for "no format" and answer CSV).
    assert_error(api.get(f"{URL}/{finished_rerun}/report?format="), 400, "invalid_format")
    assert_error(api.get(f"{URL}/{uuid.uuid4()}/report?format=html"), 404, "not_found")


def test_report_of_a_running_batch_has_no_comparison_yet(api):
    batch_id = create(api, {"queries": ["a", "b"]}).json()["id"]
    rows = list(csv.DictReader(io.StringIO(api.get(f"{URL}/{batch_id}/report?format=csv").content.decode())))
    assert [(r["status"], r["jaccard"]) for r in rows] == [("queued", ""), ("queued", "")]
    page = api.get(f"{URL}/{batch_id}/report?format=html").content.decode()
    assert "Nothing recorded yet." in page
