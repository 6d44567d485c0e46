"""The API answers JSON only, and any JSON a client sends can be echoed in its error without a 500."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # An unknown field's name and a refused choice are echoed in the error: lone surrogates there.
        ("/api/agent/jobs", '{"query": "ok", "\\ud800": 1}'),
        ("/api/agent/jobs", '{"query": "ok", "language": "\\ud800"}'),
        ("/api/agent/", '{"query": "ok", "filters": {"\\udfff": 1}}'),
        ("/api/agent/batches", '{"queries": ["a"], "overrides": {"cost_mode": "\\ud800"}}'),
    ],
)
def test_text_that_utf8_cannot_encode_is_echoed_escaped_in_a_400(api, path, body):
    response = api.post(path, data=body.encode(), content_type="application/json")
    assert response.status_code == 400, response.content
    assert response["Content-Type"].startswith("application/json")
    error = json.loads(response.content)["error"]
    assert error["code"] == "validation_error" and error["details"]
    assert b"\\ud" in response.content  # escaped, as JSON allows


def test_the_api_answers_json_only(api):
    # An HTML page was DRF's browsable API; its errors lost their code to the generic shape.
    as_html = api.get("/api/agent/jobs", {"status": "bogus"}, HTTP_ACCEPT="text/html")
    assert as_html.status_code == 406 and as_html.json()["error"]["code"] == "not_acceptable"
    browser = api.get("/api/agent/jobs", {"status": "bogus"}, HTTP_ACCEPT="text/html,*/*;q=0.8")
    assert browser.status_code == 400 and browser.json()["error"]["code"] == "validation_error"
    api_format = api.get("/api/agent/jobs", {"format": "api"})
    assert api_format.status_code == 404 and api_format.json()["error"]["code"] == "not_found"
    plain = api.get("/api/agent/jobs", HTTP_ACCEPT="text/html,*/*;q=0.8")
    assert plain.status_code == 200 and plain["Content-Type"] == "application/json"
