"""Django's SQLite backend, with one writer at a time per process queued on a lock.

SQLite lets one connection write to a database file at a time. A writer that finds the file locked
sleeps in SQLite's busy handler (1, 2, 5, 10 ... 100 ms) and tries again, so with a worker of hundreds of
threads, writers queued in sleeps far longer than anyone held the lock (a job's writes take well under a
millisecond), and the worker's threads starved the API's writers: measured, 1,000 submissions took 30 s
next to a worker of 1,000 threads against 14 s next to one of 64 (docs/benchmarks.md). Here a thread that
wants to write first takes its process's write lock: waiting threads are handed the lock as soon as it is
free, and only one thread per process meets the other processes at SQLite's own lock. Under gevent the
lock is cooperative (monkey-patched), so a waiting greenlet lets the others run instead of blocking the
whole process inside SQLite's busy handler.

A write is a transaction (`atomic`: BEGIN IMMEDIATE to COMMIT/ROLLBACK) or a single INSERT, UPDATE, DELETE
or REPLACE in autocommit mode. Reads never take the lock (WAL lets them run beside a writer). A thread
that cannot get the lock within the `timeout` option (seconds) gets "database is locked", as it would
from SQLite.
"""

from __future__ import annotations

import threading

from django.db.backends.sqlite3 import base
from django.db.utils import OperationalError

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(name: str) -> threading.Lock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(name)
        if lock is None:
            lock = _LOCKS[name] = threading.Lock()
        return lock


class SQLiteCursorWrapper(base.SQLiteCursorWrapper):
    """Takes the process's write lock around a write statement run in autocommit mode."""

    wrapper: DatabaseWrapper

    def execute(self, query, params=None):
        if self._autocommit_write(query):
            with self.wrapper.write_lock():
                return super().execute(query, params)
        return super().execute(query, params)

    def executemany(self, query, param_list):
        if self._autocommit_write(query):
            with self.wrapper.write_lock():
                return super().executemany(query, param_list)
        return super().executemany(query, param_list)

    def _autocommit_write(self, query: str) -> bool:
        # Inside a transaction the lock was taken at BEGIN (see DatabaseWrapper).
        return not self.connection.in_transaction and query.lstrip()[:7].upper().startswith(_WRITES)


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock_timeout = float(self.settings_dict["OPTIONS"].get("timeout", 5))
        self._held: threading.Lock | None = None

    def create_cursor(self, name=None):
        cursor = self.connection.cursor(factory=SQLiteCursorWrapper)
        cursor.wrapper = self
        return cursor

    def write_lock(self) -> _Held:
        return _Held(self)

    def _acquire(self) -> None:
        # Looked up now, not at creation: the test runner renames the database after that.
        lock = _lock_for(str(self.settings_dict["NAME"]))
        if not lock.acquire(timeout=self._lock_timeout):
            raise OperationalError("database is locked (waited for this process's write lock)")
        self._held = lock

    def _release(self) -> None:
        if self._held is not None:
            lock, self._held = self._held, None
            lock.release()

    def _start_transaction_under_autocommit(self):
        self._acquire()
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release()
            raise

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._release()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._release()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._release()


class _Held:
    def __init__(self, wrapper: DatabaseWrapper):
        self._wrapper = wrapper

    def __enter__(self) -> None:
        self._wrapper._acquire()

    def __exit__(self, *exc: object) -> None:
        self._wrapper._release()
