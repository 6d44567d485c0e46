"""config.sqlite3: one writer per process at a time, queued on a lock that every path releases."""

from __future__ import annotations

import threading

import pytest
from django.db import OperationalError, connection, transaction

from apps.agent.models import AgentJob
from config.sqlite3.base import _lock_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.sqlite_only,
]


@pytest.fixture
def job(django_user_model):
    from apps.agent.tests.factories import job_submit

    return job_submit(django_user_model.objects.create_user(username="writer"), top_k=1)


def write_lock():
    return _lock_for(str(connection.settings_dict["NAME"]))


def test_the_lock_is_held_for_a_transaction_and_released_at_commit(job):
    with transaction.atomic():
        AgentJob.objects.filter(id=job.id).update(attempts=1)
        assert write_lock().locked()
    assert not write_lock().locked()


def test_the_lock_is_released_when_the_transaction_rolls_back(job):
    with pytest.raises(RuntimeError), transaction.atomic():
        AgentJob.objects.filter(id=job.id).update(attempts=1)
        raise RuntimeError("boom")

    assert not write_lock().locked()
    job.refresh_from_db()
    assert job.attempts == 0


def test_the_lock_is_released_when_the_connection_closes_mid_transaction(job):
    atomic = transaction.atomic()
    atomic.__enter__()
    AgentJob.objects.filter(id=job.id).update(attempts=1)
    connection.close()
    assert not write_lock().locked()
    atomic.__exit__(None, None, None)


def test_an_autocommit_write_takes_and_releases_the_lock_and_reads_do_not(job):
    taken: list[bool] = []
    lock = write_lock()
    original = connection._acquire

    def spy() -> None:
        original()
        taken.append(lock.locked())

    connection._acquire = spy
    try:
        AgentJob.objects.filter(id=job.id).update(attempts=2)
        assert AgentJob.objects.get(id=job.id).attempts == 2
    finally:
        del connection._acquire
    assert taken == [True]
    assert not lock.locked()


def test_many_threads_write_at_once_without_database_is_locked(job):
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(10):
                with transaction.atomic():
                    row = AgentJob.objects.select_for_update().get(id=job.id)
                    AgentJob.objects.filter(id=row.id).update(attempts=row.attempts + 1)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    job.refresh_from_db()
    assert job.attempts == 160  # every read-modify-write was serialised: none was lost


def test_a_writer_that_waits_too_long_gets_database_is_locked(job):
    connection._lock_timeout, timeout = 0.05, connection._lock_timeout
    lock = write_lock()
    lock.acquire()  # another thread of this process is writing
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            AgentJob.objects.filter(id=job.id).update(attempts=3)
    finally:
        lock.release()
        connection._lock_timeout = timeout
