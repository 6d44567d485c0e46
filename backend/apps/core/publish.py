"""The one module that knows the Celery task names: services publish work through it.

Tasks import services (a task takes ids and calls one service); services never import a tasks module,
so there is no import cycle between them. A task is looked up by its name in the Celery app's registry
and published with its own `apply_async`, so routing and priorities (CELERY_TASK_ROUTES) and eager mode
(tests, CELERY_TASK_ALWAYS_EAGER) apply exactly as when calling the task object.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from celery import current_app

# apps/agent/tasks.py
JOB_RUN = "agent.job_run"
BATCH_JOB_RUN = "agent.batch_job_run"
JOBS_SWEEP = "agent.jobs_sweep"
JOBS_PURGE = "agent.jobs_purge"
NOOP = "agent.noop"
# apps/webhooks/tasks.py (the "agent." prefix predates the app; the names are part of the deployment)
DELIVERY_SEND = "agent.delivery_send"
DELIVERIES_SWEEP = "agent.deliveries_sweep"


def task_publish(
    name: str,
    *,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    countdown: float | None = None,
    producer: Any = None,
) -> None:
    """Publish task `name`. Raises what the broker raises (callers decide: the sweeps recover)."""
    options: dict[str, Any] = {}
    if countdown is not None:
        options["countdown"] = countdown
    if producer is not None:
        options["producer"] = producer
    _task(name).apply_async(args=list(args), kwargs=kwargs, **options)


_import_lock = threading.Lock()


def _task(name: str) -> Any:
    """The registered task `name`. A worker imports the tasks modules when it starts; any other process
    (the API, a management command) has them imported here on its first publish, by Celery's own
    autodiscovery over INSTALLED_APPS, exactly as the worker does.

    Under a lock: the first requests of a new API process arrive together, and a thread that found the
    name missing while another was importing the modules got `NotRegistered` (a 500 at the first burst of
    POSTs, found by bench/concurrency.py)."""
    if name not in current_app.tasks:
        with _import_lock:
            if name not in current_app.tasks:
                current_app.loader.import_default_modules()
    return current_app.tasks[name]


def publishing_is_eager() -> bool:
    """True when tasks run in the caller (tests, CELERY_TASK_ALWAYS_EAGER): there is no broker."""
    return bool(current_app.conf.task_always_eager)


@contextmanager
def producer_batch() -> Iterator[Any]:
    """One broker connection whose messages are sent together (pipelined on Redis) when the block ends."""
    with current_app.producer_or_acquire() as producer, producer.batch():
        yield producer
