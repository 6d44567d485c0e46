"""apps/core/publish.py: a task is found by its name, also when the first publishes of a process race."""

from __future__ import annotations

import threading
import time

from celery import current_app

from apps.core import publish


def test_concurrent_first_publishes_wait_for_the_one_import_of_the_tasks(monkeypatch):
    # A new API process: the registry lacks the task until the tasks modules are imported, which takes a
    # while. Eight requests publish at once; every one must find the task (none gets NotRegistered).
    name = "librarian.test_publish_race"
    imports: list[float] = []

    def slow_import():
        imports.append(time.monotonic())
        time.sleep(0.2)
        if name not in current_app.tasks:

            @current_app.task(name=name)
            def noop():
                return None

    monkeypatch.setattr(current_app.loader, "import_default_modules", slow_import)
    start = threading.Barrier(8)
    found, errors = [], []

    def publish_first():
        start.wait()
        try:
            found.append(publish._task(name).name)
        except Exception as exc:  # noqa: BLE001 - the failure under test
            errors.append(repr(exc))

    threads = [threading.Thread(target=publish_first) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    finally:
        current_app.tasks.pop(name, None)
    assert errors == [] and found == [name] * 8
    assert len(imports) == 1  # one import; the others waited for it
