"""The one Celery app of the project. Workers start it with `celery -A config.celery_app worker`."""

import os
import sys

from celery import Celery
from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)
from django.conf import settings
from django.db import close_old_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("librarian")
# Every Celery setting lives in Django settings under the CELERY_ prefix (config/settings.py).
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _warm_up() -> None:
    # Imported when a worker starts, not with this module: Django imports this module (config/__init__.py)
    # before its app registry is ready, and the services import models.
    from agent.language import warm_up as language_warm_up
    from apps.agent.services.retrieval import retrieval_warm_up

    language_warm_up()
    retrieval_warm_up()


def _alive_start() -> None:
    # The process that runs tasks says it is alive, so that its slow attempts are not taken over.
    from apps.agent.services.worker_liveness import alive_start

    alive_start()


@worker_shutdown.connect
@worker_process_shutdown.connect
def _alive_stop(**kwargs) -> None:
    from apps.agent.services.worker_liveness import alive_stop

    alive_stop()


@worker_init.connect
def _warm_up_in_process(sender=None, **kwargs) -> None:
    # Thread and gevent pools run tasks in this process: load the embedding model and open the store
    # once, before the first job. Prefork children do it after the fork (below): native handles and
    # SQLite connections must not cross a fork.
    pool = getattr(getattr(sender, "pool_cls", None), "__module__", "") or ""
    if "prefork" not in pool:
        tune_interpreter()
        _warm_up()
        _alive_start()


@worker_process_init.connect
def _warm_up_in_child(**kwargs) -> None:
    tune_interpreter()
    _warm_up()
    _alive_start()


def tune_interpreter() -> None:
    """Hand the GIL over every WORKER_SWITCH_INTERVAL_MS (1 ms) instead of Python's 5 ms.

    A worker runs hundreds of threads that each hold the GIL briefly between waits. A thread that holds
    the database's write lock and needs the GIL back waits up to a whole interval for it, and every other
    writer (in this process and in the API) queues behind that lock meanwhile. Measured with 1,000
    jobs (docs/benchmarks.md): 1 ms finished the concurrency benchmark in 8.8-9.3 s instead of 10.6-11.1 s
    and raised throughput by 10-20%; 0.5 ms was no better.
    """
    sys.setswitchinterval(settings.WORKER_SWITCH_INTERVAL_MS / 1000)


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(sender=None, **kwargs) -> None:
    # Django's per-request rule, per task (CELERY_DB_REUSE_MAX keeps Celery from closing every connection).
    # Not for eager tasks: they run inside the caller's transaction.
    if sender is not None and getattr(sender.request, "is_eager", False):
        return
    close_old_connections()
