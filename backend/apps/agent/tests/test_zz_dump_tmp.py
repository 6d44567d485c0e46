import pytest
from apps.agent.tests.test_batches_api import create, past_jobs
pytestmark = pytest.mark.django_db

def test_dump(api, store, django_capture_on_commit_callbacks):
    past_jobs(api, django_capture_on_commit_callbacks, [f"question {i}" for i in range(12)])
    bid = create(api, {"filter": {}, "overrides": {"top_k": 3}}, capture=django_capture_on_commit_callbacks).json()["id"]
    open("/tmp/report.html", "wb").write(api.get(f"/api/agent/batches/{bid}/report?format=html").content)
    open("/tmp/report.csv", "wb").write(api.get(f"/api/agent/batches/{bid}/report?format=csv").content)
