"""List pagination: strict limit/offset, bounded pages."""

from __future__ import annotations

import pytest

from apps.agent.pagination import MAX_OFFSET, MAX_PAGE
from apps.agent.tests.factories import jobs_make

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=-1",
        "limit=abc",
        "limit=1.5",
        "offset=-1",
        "offset=x",
        "limit=1&limit=2",
        "limit=%EF%BC%95",
        "limit=" + "9" * 30,
        f"limit={MAX_PAGE + 1}",
        f"offset={MAX_OFFSET + 1}",
    ],
)
def test_bad_limit_or_offset_is_400(api, query):
    response = api.get(f"/api/agent/jobs?{query}")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


def test_a_full_page_and_offset_pages(api, user):
    jobs_make(user, MAX_PAGE + 5)

    page = api.get(f"/api/agent/jobs?limit={MAX_PAGE}").json()
    tail = api.get(f"/api/agent/jobs?limit=10&offset={MAX_PAGE}").json()

    assert page["count"] == MAX_PAGE + 5
    assert len(page["results"]) == MAX_PAGE
    assert len(tail["results"]) == 5 and tail["next"] is None


def test_the_schema_declares_the_ranges_the_api_enforces(api):
    schema = api.get("/api/schema/?format=json").json()
    for path in ("/api/agent/jobs", "/api/agent/batches"):
        parameters = {p["name"]: p["schema"] for p in schema["paths"][path]["get"]["parameters"]}
        assert parameters["limit"] == {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}
        assert parameters["offset"] == {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}
