"""The one Celery app of the project. Workers start it with `celery -A config.celery_app worker`."""

import os

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_init, worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("librarian")
# Every Celery setting lives in Django settings under the CELERY_ prefix (config/settings.py).
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _warm_up() -> None:
    from apps.agent.services.retrieval import retrieval_warm_up

    retrieval_warm_up()


@worker_init.connect
def _warm_up_in_process(sender=None, **kwargs) -> None:
    # Thread and gevent pools run tasks in this process: load the embedding model and open the store
    # once, before the first job. Prefork children do it after the fork (below): native handles and
    # SQLite connections must not cross a fork.
    pool = getattr(getattr(sender, "pool_cls", None), "__module__", "") or ""
    if "prefork" not in pool:
        _warm_up()


@worker_process_init.connect
def _warm_up_in_child(**kwargs) -> None:
    _warm_up()


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(sender=None, **kwargs) -> None:
    # Django's per-request rule, per task (CELERY_DB_REUSE_MAX keeps Celery from closing every connection).
    # Not for eager tasks: they run inside the caller's transaction.
    if sender is not None and getattr(sender.request, "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()
