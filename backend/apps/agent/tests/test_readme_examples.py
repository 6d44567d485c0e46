"""The README's batch example works as written on what a fresh install has: one question answered."""

from __future__ import annotations

import json
import re

import pytest
from django.conf import settings

pytestmark = pytest.mark.django_db


def readme_batch_body() -> dict:
    readme = (settings.REPO_DIR / "README.md").read_text()
    call = re.search(r"/api/agent/batches -H.*?-d '(\{.*?\})'", readme, re.S)
    assert call, "the README has a batch creation example"
    return json.loads(call.group(1))


def test_the_readme_batch_example_selects_the_question_the_readme_asked_before(
    api, store, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        asked = api.post(
            "/api/agent/jobs",
            {"query": "novelas de realismo mágico", "top_k": 3, "filters": {"language": "es"}},
            format="json",
        )
    assert asked.status_code == 202
    assert api.get(f"/api/agent/jobs/{asked.json()['id']}").json()["status"] == "succeeded"

    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/agent/batches", readme_batch_body(), format="json")

    assert response.status_code == 202, response.content
    assert response.json()["size"] == 1
