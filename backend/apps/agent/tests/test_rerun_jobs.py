"""`manage.py rerun_jobs`: selection and overrides as flags, --wait/--no-wait, the printed comparison."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from apps.agent.models import AgentJob, Batch, JobStatus
from apps.agent.services import job_execution
from apps.agent.tests.factories import job_submit


def past_jobs(user, queries) -> list[AgentJob]:
    made = []
    for query in queries:
        job = job_submit(user, query)
        assert job_execution.job_run(job_id=job.id) == JobStatus.SUCCEEDED
        made.append(job)
    return made


def rerun(*args) -> str:
    out = io.StringIO()
    call_command("rerun_jobs", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_rerun_waits_and_prints_the_comparison(user, store):
    parents = past_jobs(user, ["whales", "pirates"])
    output = rerun("--owner", "alice", "--all", "--top-k", "3", "--poll-interval", "0.05", "--timeout", "30")
    batch = Batch.objects.get()
    assert [j.parent_id for j in AgentJob.objects.filter(batch=batch).order_by("created_at")] == [
        p.id for p in parents
    ]
    lines = output.splitlines()
    assert lines[0] == f"batch {batch.id}: 2 jobs queued"
    assert lines[1] == f"batch {batch.id} completed: 2 succeeded, 0 failed, 0 cancelled of 2"
    assert lines[2].startswith("totals: ")
    assert lines[3] == (
        "comparison: 2 of 2 compared; 0 identical, 0 reordered, 2 changed; mean Jaccard 0.6667"
    )
    assert lines[4].startswith("degraded: 0 became degraded, 0 recovered; latency p50 ")
    assert lines[5] == f"report: /api/agent/batches/{batch.id}/report?format=html (or format=csv)"


@pytest.mark.django_db
def test_no_wait_returns_at_once_with_the_batch_id(user, store):
    parent = past_jobs(user, ["whales"])[0]
    output = rerun("--owner", "alice", "--ids", str(parent.id), "--model", "other", "--no-wait")
    batch = Batch.objects.get()
    assert output.splitlines() == [
        f"batch {batch.id}: 1 jobs queued",
        f"follow it with GET /api/agent/batches/{batch.id}",
    ]
    assert batch.overrides == {"model": "other"}
    assert AgentJob.objects.get(batch=batch).status == JobStatus.QUEUED


@pytest.mark.django_db
def test_filter_flags_and_overrides_are_validated_like_the_api(user, store):
    past_jobs(user, ["whales"])
    rerun(
        "--owner",
        "alice",
        "--status",
        "succeeded",
        "--created-after",
        "2000-01-01T00:00Z",
        "--filters",
        '{"language": "es"}',
        "--no-wait",
    )
    batch = Batch.objects.get()
    assert batch.selection["filter"]["created_after"] == "2000-01-01T00:00:00+00:00"
    assert AgentJob.objects.get(batch=batch).options == {"top_k": 2, "filters": {"language": "es"}}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--owner", "nobody", "--all"], "No user 'nobody'."),
        (["--owner", "alice"], "Choose jobs: --ids, or filters"),
        (["--owner", "alice", "--all", "--ids", "x"], "not both"),
        (["--owner", "alice", "--ids", "not-a-uuid"], "Invalid arguments"),
        (["--owner", "alice", "--all", "--top-k", "0"], "Invalid arguments"),
        (["--owner", "alice", "--all", "--filters", "{nope"], "--filters is not JSON"),
        (["--owner", "alice", "--status", "failed"], "batch_empty: The selection is empty"),
    ],
)
def test_errors_are_command_errors(user, store, args, message):
    past_jobs(user, ["whales"])
    with pytest.raises(CommandError, match=message):
        rerun(*args, "--no-wait")
    assert Batch.objects.count() == 0


@pytest.mark.django_db
def test_wait_gives_up_after_the_timeout_and_says_the_batch_goes_on(user, store):
    past_jobs(user, ["whales"])
    # Inside the test's transaction nothing is published, so the batch never ends.
    with pytest.raises(CommandError, match=r"still running after 0 s \(0/1 finished\); it goes on"):
        rerun("--owner", "alice", "--all", "--timeout", "0.1", "--poll-interval", "0.05")
