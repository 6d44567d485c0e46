"""Fair share (services/fairness.py): per-user caps on published jobs, first in first out, admission when a
slot frees and from the sweep. Publishing is recorded instead of sent; tests/e2e/test_fairness_e2e.py runs
it with real workers."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.types import AgentOptions
from apps.agent.models import AgentJob, Batch, JobStatus, UserFairShare
from apps.agent.services import fairness, job_execution, jobs

pytestmark = pytest.mark.django_db


@pytest.fixture
def published(monkeypatch) -> list[tuple[str, bool]]:
    sent: list[tuple[str, bool]] = []

    def publish(job_id, *, batch):
        sent.append((str(job_id), batch))
        return True

    monkeypatch.setattr(fairness, "_task_publish", publish)
    # An uncapped kind is published at creation by the job services themselves.
    monkeypatch.setattr(jobs, "_job_publish", lambda job: publish(job.id, batch=job.batch_id is not None))
    return sent


@pytest.fixture
def capped(settings):
    settings.AGENT_MAX_RUNNING_PER_USER = 2
    settings.AGENT_MAX_RUNNING_PER_USER_BATCH = None
    return settings


def submit(user, n: int, **kwargs) -> list[AgentJob]:
    return [
        jobs.job_create(owner=user, query=f"whales {i}", options=AgentOptions(top_k=2), **kwargs)[0]
        for i in range(n)
    ]


def ids(rows) -> list[str]:
    return [str(row.id) for row in rows]


def test_jobs_over_the_cap_wait_unpublished_in_order(
    user, capped, published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        created = submit(user, 5)

    assert [job_id for job_id, _ in published] == ids(created[:2])
    waiting = AgentJob.objects.filter(owner=user, enqueued_at__isnull=True).order_by("created_at")
    assert ids(waiting) == ids(created[2:])
    assert set(AgentJob.objects.values_list("status", flat=True)) == {JobStatus.QUEUED}


def test_another_users_job_is_published_at_once(
    user, other_user, capped, published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        submit(user, 5)
        theirs = submit(other_user, 1)

    assert published[-1] == (str(theirs[0].id), False)
    assert len(published) == 3


def test_the_end_of_a_job_admits_the_owners_next_one(
    user, capped, published, store, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        created = submit(user, 4)
    assert len(published) == 2

    with django_capture_on_commit_callbacks(execute=True):
        assert job_execution.job_run(job_id=created[0].id) == JobStatus.SUCCEEDED

    assert [job_id for job_id, _ in published] == ids(created[:3])
    with django_capture_on_commit_callbacks(execute=True):
        jobs.job_cancel(job=created[1])  # a queued (published) job cancelled also frees its slot
    assert [job_id for job_id, _ in published] == ids(created)


def test_batch_jobs_count_apart_with_their_own_cap(
    user, settings, published, django_capture_on_commit_callbacks
):
    settings.AGENT_MAX_RUNNING_PER_USER = 1
    settings.AGENT_MAX_RUNNING_PER_USER_BATCH = 3
    batch = Batch.objects.create(owner=user, source="queries")
    with django_capture_on_commit_callbacks(execute=True):
        interactive = submit(user, 2)
        batch_jobs = submit(user, 5, batch=batch)

    assert published == [(str(interactive[0].id), False)] + [(job_id, True) for job_id in ids(batch_jobs[:3])]


def test_an_uncapped_kind_is_published_at_creation(
    user, settings, published, django_capture_on_commit_callbacks
):
    settings.AGENT_MAX_RUNNING_PER_USER = 1
    settings.AGENT_MAX_RUNNING_PER_USER_BATCH = None
    batch = Batch.objects.create(owner=user, source="queries")
    with django_capture_on_commit_callbacks(execute=True):
        batch_jobs = submit(user, 3, batch=batch)

    assert [job_id for job_id, _ in published] == ids(batch_jobs)
    assert not AgentJob.objects.filter(enqueued_at__isnull=True).exists()


def test_the_sweep_admits_when_a_finish_hook_was_lost(
    user, capped, published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        created = submit(user, 4)
    # Two jobs end without their hook (the process died after the commit), and time passes.
    AgentJob.objects.filter(id__in=[c.id for c in created[:2]]).update(status=JobStatus.SUCCEEDED)
    for job in AgentJob.objects.all():  # a minute older, in the same order
        AgentJob.objects.filter(id=job.id).update(created_at=job.created_at - timedelta(minutes=1))
    published.clear()

    counts = jobs.jobs_sweep()

    assert counts["enqueued"] == 2
    assert [job_id for job_id, _ in published] == ids(created[2:])
    published.clear()
    assert jobs.jobs_sweep()["enqueued"] == 0  # full again: nothing is published blindly
    assert published == []


def test_a_failed_publish_puts_the_job_back_in_line(
    user, capped, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(fairness, "_task_publish", lambda job_id, *, batch: False)
    with django_capture_on_commit_callbacks(execute=True):
        created = submit(user, 3)

    assert not AgentJob.objects.filter(enqueued_at__isnull=False).exists()
    monkeypatch.setattr(fairness, "_task_publish", lambda job_id, *, batch: True)
    assert fairness.admit_and_publish(owner_id=user.id, batch=False) == 2
    admitted = AgentJob.objects.filter(enqueued_at__isnull=False).order_by("created_at")
    assert ids(admitted) == ids(created[:2])


def test_admission_waits_for_the_sweep_when_the_lock_is_unavailable(user, capped, monkeypatch, caplog):
    created = submit(user, 2, enqueue=False)
    AgentJob.objects.filter(id__in=[c.id for c in created]).update(enqueued_at=None)

    class DownRedis:
        def lock(self, *args, **kwargs):
            raise ConnectionError("redis down")

    monkeypatch.setattr(fairness, "redis_client", lambda: DownRedis())

    assert fairness.admit_and_publish(owner_id=user.id, batch=False) == 0
    assert "could not admit jobs of user" in caplog.text
    assert not AgentJob.objects.filter(enqueued_at__isnull=False).exists()


# --- per-user overrides (UserFairShare, set in the admin) ---------------------------------------------


def test_a_users_override_is_the_cap_used_at_their_admission(
    user, other_user, capped, published, django_capture_on_commit_callbacks
):
    UserFairShare.objects.create(user=user, max_running=1)
    with django_capture_on_commit_callbacks(execute=True):
        mine = submit(user, 3)
        theirs = submit(other_user, 3)

    # alice is held to her override (1), bob to the default (2).
    assert [job_id for job_id, _ in published] == ids(mine[:1]) + ids(theirs[:2])
    assert fairness.user_caps(owner_id=user.pk) == {"max_running": 1, "max_running_batch": None}
    assert fairness.user_caps(owner_id=other_user.pk) == {"max_running": 2, "max_running_batch": None}


def test_an_override_caps_a_user_when_the_default_is_unlimited(
    user, other_user, settings, published, store, django_capture_on_commit_callbacks
):
    settings.AGENT_MAX_RUNNING_PER_USER = None
    settings.AGENT_MAX_RUNNING_PER_USER_BATCH = None
    UserFairShare.objects.create(user=user, max_running=1)
    with django_capture_on_commit_callbacks(execute=True):
        mine = submit(user, 3)
        theirs = submit(other_user, 2)
    assert [job_id for job_id, _ in published] == ids(mine[:1]) + ids(theirs)

    # Her slot frees when her job ends: the next one in her line goes, and only that one.
    with django_capture_on_commit_callbacks(execute=True):
        assert job_execution.job_run(job_id=mine[0].id) == JobStatus.SUCCEEDED
    assert [job_id for job_id, _ in published][-1] == str(mine[1].id)
    assert AgentJob.objects.filter(owner=user, enqueued_at__isnull=True).count() == 1


def test_an_override_of_the_batch_cap_holds_her_batch_jobs_apart(
    user, settings, published, django_capture_on_commit_callbacks
):
    settings.AGENT_MAX_RUNNING_PER_USER = None
    settings.AGENT_MAX_RUNNING_PER_USER_BATCH = 4
    UserFairShare.objects.create(user=user, max_running_batch=2)
    batch = Batch.objects.create(owner=user, source="queries")
    with django_capture_on_commit_callbacks(execute=True):
        interactive = submit(user, 2)
        batch_jobs = submit(user, 5, batch=batch)

    assert published == [(job_id, False) for job_id in ids(interactive)] + [
        (job_id, True) for job_id in ids(batch_jobs[:2])
    ]


def test_an_unlimited_override_lifts_the_default_cap(
    user, capped, published, django_capture_on_commit_callbacks
):
    UserFairShare.objects.create(user=user, max_running=1, unlimited=True)
    with django_capture_on_commit_callbacks(execute=True):
        created = submit(user, 4)

    assert [job_id for job_id, _ in published] == ids(created)
    assert fairness.user_caps(owner_id=user.pk) == {"max_running": None, "max_running_batch": None}


def test_the_sweep_publishes_a_line_whose_cap_was_lifted(
    user, settings, published, django_capture_on_commit_callbacks
):
    settings.AGENT_MAX_RUNNING_PER_USER = None
    settings.AGENT_MAX_RUNNING_PER_USER_BATCH = None
    override = UserFairShare.objects.create(user=user, max_running=1)
    with django_capture_on_commit_callbacks(execute=True):
        created = submit(user, 3)
    assert len(published) == 1
    AgentJob.objects.update(created_at=created[0].created_at - timedelta(minutes=1))
    assert jobs.jobs_sweep()["enqueued"] == 0  # still capped: nothing is published blindly

    override.unlimited = True  # the operator lifts her cap while two jobs wait
    override.save()
    assert jobs.jobs_sweep()["enqueued"] == 2

    assert sorted(job_id for job_id, _ in published[1:]) == sorted(ids(created[1:]))
    assert not AgentJob.objects.filter(enqueued_at__isnull=True).exists()


def test_the_sweep_publishes_an_uncapped_users_failed_publish_under_a_default_cap(
    user, capped, published, django_capture_on_commit_callbacks
):
    """Her jobs were published at creation (unlimited override); one publish failed and waits unmarked."""
    UserFairShare.objects.create(user=user, unlimited=True)
    (job,) = submit(user, 1, enqueue=False)
    AgentJob.objects.filter(id=job.id).update(
        enqueued_at=None, created_at=job.created_at - timedelta(minutes=1)
    )
    published.clear()

    assert jobs.jobs_sweep()["enqueued"] == 1
    assert published == [(str(job.id), False)]


def test_usage_shows_the_effective_caps(user, api, capped):
    assert api.get("/api/agent/usage").json()["fair_share"] == {"max_running": 2, "max_running_batch": None}

    UserFairShare.objects.create(user=user, max_running_batch=3)
    assert api.get("/api/agent/usage").json()["fair_share"] == {"max_running": 2, "max_running_batch": 3}


def test_the_admin_edits_a_users_fair_share(user, client, django_user_model):
    admin = django_user_model.objects.create_superuser(username="root", password="pw-root")
    client.force_login(admin)
    assert client.get("/admin/agent/userfairshare/add/").status_code == 200

    added = client.post(
        "/admin/agent/userfairshare/add/",
        {"user": user.pk, "max_running": "3", "max_running_batch": "", "note": "a team of three"},
    )
    assert added.status_code == 302
    override = UserFairShare.objects.get(user=user)
    assert (override.max_running, override.max_running_batch, override.unlimited) == (3, None, False)

    change = f"/admin/agent/userfairshare/{override.pk}/change/"
    page = client.get(change)
    assert page.status_code == 200 and "AGENT_MAX_RUNNING_PER_USER_BATCH" in page.content.decode()
    refused = client.post(change, {"user": user.pk, "max_running": "0", "max_running_batch": "1"})
    assert refused.status_code == 200  # the form again, with the error
    assert "Ensure this value is greater than or equal to 1." in refused.content.decode()
    changed = client.post(change, {"user": user.pk, "max_running": "", "max_running_batch": "1"})
    assert changed.status_code == 302
    assert fairness.user_caps(owner_id=user.pk)["max_running_batch"] == 1
    assert client.get("/admin/agent/userfairshare/").status_code == 200
