"""What one job costs the database (docs/benchmarks.md): writes folded together, queries bounded.

The figures these tests pin were measured; a change that adds a query per job should show up here first.
"""

from __future__ import annotations

import time

import pytest
from django.db import connection

from agent.llm_factory import StubLLM
from agent.llm_factory.streaming import split_words
from agent.types import AgentOptions
from apps.agent.models import AgentJob, JobStatus
from apps.agent.services import job_execution, jobs
from apps.agent.tests.factories import job_submit
from apps.agent.tests.wiring import wire_runtime

pytestmark = pytest.mark.django_db


def test_submission_marks_the_job_published_in_its_insert(
    user, monkeypatch, django_capture_on_commit_callbacks
):
    published: list[str] = []
    monkeypatch.setattr(jobs, "_job_publish", lambda job: published.append(str(job.id)) or True)

    with django_capture_on_commit_callbacks(execute=True):
        job, created = jobs.job_create(owner=user, query="whales", options=AgentOptions(top_k=2))

    assert created and published == [str(job.id)]
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.enqueued_at is not None


def test_a_refused_publish_clears_the_mark_for_the_sweep(
    user, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(jobs, "_job_publish", lambda job: False)

    with django_capture_on_commit_callbacks(execute=True):
        job, _ = jobs.job_create(owner=user, query="whales", options=AgentOptions(top_k=2))

    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.enqueued_at is None


def test_a_job_without_webhook_costs_four_statements_and_two_savepoint_marks(
    user, store, monkeypatch, django_assert_num_queries
):
    job = job_submit(user)
    # The answer streams and its deltas ask the row once the interval has passed: on a loaded machine the
    # steps before them can take that long. Pinned out of reach, as the figures below assume.
    monkeypatch.setattr(job_execution, "CANCEL_CHECK_INTERVAL_SEC", 3600)

    # claim: UPDATE, SELECT; finish: SAVEPOINT, UPDATE, INSERT (trace rows), RELEASE SAVEPOINT. The
    # savepoint statements exist only because the test runs inside a transaction; no cancel query (the
    # steps take less than CANCEL_CHECK_INTERVAL_SEC), no event lookup (no webhook, no batch).
    with django_assert_num_queries(6):
        assert job_execution.job_run(job_id=job.id) == JobStatus.SUCCEEDED

    assert job.trace_steps.count() == 4


def test_a_cancel_during_the_llm_call_is_seen_by_the_finish_without_a_query_of_its_own(
    user, store, monkeypatch, django_assert_num_queries
):
    job = job_submit(user)

    class SlowCancelledLLM(StubLLM):
        def invoke(self, prompt, *, deadline=None):
            AgentJob.objects.filter(id=job.id).update(cancel_requested=True)  # as POST .../cancel does
            time.sleep(0.2)  # the default CANCEL_CHECK_INTERVAL_SEC
            return super().invoke(prompt, deadline=deadline)

    wire_runtime(monkeypatch, llm_for=lambda job, key: SlowCancelledLLM())
    # The answer streams (live jobs), and between its deltas the row is asked once the interval has passed:
    # with a long interval no delta asks, so the cancel is left to the finish (the streamed case below).
    monkeypatch.setattr(job_execution, "CANCEL_CHECK_INTERVAL_SEC", 3600)

    # claim: UPDATE, SELECT; the cancel in the LLM: UPDATE; finish: SAVEPOINT, the UPDATE that requires
    # no cancel (changes nothing), RELEASE; then SAVEPOINT, the UPDATE to cancelled, RELEASE (the savepoint
    # statements only because the test runs inside a transaction). No SELECT of the cancel flag.
    with django_assert_num_queries(9) as captured:
        assert job_execution.job_run(job_id=job.id) == JobStatus.CANCELLED
    selects = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("SELECT")]
    assert len(selects) == 1 and "cancel_requested" not in selects[0].split("WHERE")[1]  # the claim's read

    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.result is None and job.finished_at is not None
    assert job.trace_steps.count() == 0  # the discarded answer leaves no trace rows


def test_a_cancel_while_the_answer_streams_stops_the_stream_with_one_query(
    user, store, monkeypatch, django_assert_num_queries
):
    job = job_submit(user)

    class SlowCancelledLLM(StubLLM):
        def invoke(self, prompt, *, deadline=None):
            AgentJob.objects.filter(id=job.id).update(cancel_requested=True)  # as POST .../cancel does
            time.sleep(job_execution.CANCEL_CHECK_INTERVAL_SEC)
            return super().invoke(prompt, deadline=deadline)

    wire_runtime(monkeypatch, llm_for=lambda job, key: SlowCancelledLLM())

    # claim: UPDATE, SELECT; the cancel in the LLM: UPDATE; the first delta asks the row (the interval has
    # passed): SELECT; the cancellation: SAVEPOINT, UPDATE, RELEASE. No finish with a result.
    with django_assert_num_queries(7) as captured:
        assert job_execution.job_run(job_id=job.id) == JobStatus.CANCELLED
    selects = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("SELECT")]
    assert len(selects) == 2 and "cancel_requested" in selects[1].split("WHERE")[1]

    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.result is None and job.finished_at is not None
    assert job.trace_steps.count() == 0


def record_llm_calls(monkeypatch) -> list[str]:
    """Jobs run with the stub LLM; the returned list gets "llm" for each call."""
    calls: list[str] = []

    class RecordingLLM(StubLLM):
        def invoke(self, prompt, *, deadline=None):
            calls.append("llm")
            return super().invoke(prompt, deadline=deadline)

    wire_runtime(monkeypatch, llm_for=lambda job, key: RecordingLLM())
    return calls


def test_a_slow_step_before_the_llm_call_asks_for_a_cancel_and_skips_the_call(user, store, monkeypatch):
    job = job_submit(user)
    calls = record_llm_calls(monkeypatch)
    real = job_execution.runtime.retriever()

    class SlowRetriever:
        def retrieve(self, query, k, filters):
            AgentJob.objects.filter(id=job.id).update(cancel_requested=True)
            time.sleep(job_execution.CANCEL_CHECK_INTERVAL_SEC)
            return real.retrieve(query, k, filters)

    wire_runtime(monkeypatch, retriever=lambda: SlowRetriever())

    assert job_execution.job_run(job_id=job.id) == JobStatus.CANCELLED
    assert calls == []


def test_a_cancel_requested_before_the_claim_stops_the_job_at_the_first_boundary(user, store, monkeypatch):
    job = job_submit(user)
    calls = record_llm_calls(monkeypatch)
    claim = job_execution.job_claim

    def claim_then_cancel(*, job_id):
        claimed = claim(job_id=job_id)
        claimed.cancel_requested = True  # the row the claim read said so
        return claimed

    monkeypatch.setattr(job_execution, "job_claim", claim_then_cancel)

    assert job_execution.job_run(job_id=job.id) == JobStatus.CANCELLED
    assert calls == []


@pytest.mark.django_db(transaction=True)
def test_the_llm_wrapper_hands_the_connection_back_outside_a_transaction():
    seen: list[object] = []

    class Inner:
        decision = "recorded"

        def invoke(self, prompt, *, deadline=None):
            seen.append(connection.connection)
            return {"content": prompt}

    AgentJob.objects.exists()  # opens this thread's connection
    assert connection.connection is not None
    wrapped = job_execution.JobLLM(Inner(), release_connection=True)
    assert wrapped.called is False

    assert wrapped.invoke("hi", deadline=1.0) == {"content": "hi"}
    assert seen == [None]  # closed before the call: with a pool, back in the pool
    assert wrapped.decision == "recorded" and wrapped.called is True
    AgentJob.objects.exists()  # and the next query simply takes a connection again


def test_the_llm_wrapper_keeps_the_connection_inside_a_transaction():
    class Inner:
        def invoke(self, prompt, *, deadline=None):
            return {"open": connection.connection is not None}

    AgentJob.objects.exists()

    assert job_execution.JobLLM(Inner(), release_connection=True).invoke("hi") == {"open": True}
    assert job_execution.JobLLM(Inner()).invoke("hi") == {"open": True}  # without a pool: never released


@pytest.mark.django_db(transaction=True)
def test_a_pooled_connection_goes_back_to_the_pool_before_retrieval(user, store, monkeypatch):
    """With PostgreSQL's pool (CI's PostgreSQL pass) the claim's connection is handed back before the
    retrieval; without a pool (SQLite) the thread keeps its connection, which costs nothing to hold."""
    pooled = bool(connection.settings_dict["OPTIONS"].get("pool"))
    held: list[bool] = []

    def retriever():
        held.append(connection.connection is not None)
        return store

    wire_runtime(monkeypatch, retriever=retriever)
    job = job_submit(user)
    assert job_execution.job_run(job_id=job.id) == JobStatus.SUCCEEDED
    assert held == [not pooled]


@pytest.mark.django_db(transaction=True)
def test_a_streaming_job_holds_no_pooled_connection_between_its_cancel_checks(user, store, monkeypatch):
    """While an answer streams (seconds with a real provider), the cancel check between deltas reads the row
    every CANCEL_CHECK_INTERVAL_SEC. With PostgreSQL's pool (CI's PostgreSQL pass) it hands the connection
    back after each check: a thread holding one for the whole stream would allow DB_POOL_MAX_SIZE streams
    per process, the other threads' queries waiting up to DB_POOL_TIMEOUT_SEC. Without a pool (SQLite) the
    thread keeps its connection."""
    pooled = bool(connection.settings_dict["OPTIONS"].get("pool"))
    held: list[bool] = []

    class SlowStream(StubLLM):
        def stream(self, prompt, *, on_delta, deadline=None):
            result = self.invoke(prompt, deadline=deadline)
            words = split_words(result["content"])
            for word in words[:2]:  # two deltas, each after the check interval: each is checked
                time.sleep(job_execution.CANCEL_CHECK_INTERVAL_SEC)
                on_delta(word)
                held.append(connection.connection is not None)
            for word in words[2:]:
                on_delta(word)
            return result

    wire_runtime(monkeypatch, llm_for=lambda job, key: SlowStream())
    job = job_submit(user)
    assert job_execution.job_run(job_id=job.id) == JobStatus.SUCCEEDED
    assert held == [not pooled, not pooled]
