"""The ASGI application: what the API server runs (gunicorn with uvicorn workers, `make up` and compose;
docs/operations.md, "Serving the API").

Async views (the job wait and event stream) run on the event loop. Sync code (every other view, the DRF
part of the live views, Django's request signals) runs on a pool of `API_SYNC_THREADS` threads per process.

Why a pool: Django's ASGI handler gives each request a thread of its own for its sync code
(asgiref's `ThreadSensitiveContext`), created at the request's first sync call and kept until the request
ends, so 1,000 open waits or event streams held 1,000 idle threads (measured: docs/benchmarks.md, "Live
jobs"). Here each request's context hands its sync calls to one shared pool instead, as a threaded WSGI
server does: a request's sync calls run one at a time, each in one thread, and each thread keeps its
database connection across requests (`CONN_MAX_AGE`, or the PostgreSQL pool) as under WSGI.

With DEBUG on, static files (the admin's, the API docs') are served too, as `runserver` would.
"""

import os
from concurrent.futures import Executor, ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()
if settings.DEBUG:
    django_application = ASGIStaticFilesHandler(django_application)


class SharedPool(Executor):
    """The executor of one request's thread-sensitive context: its calls go to the process's pool."""

    def __init__(self, pool: ThreadPoolExecutor):
        self._pool = pool

    def submit(self, fn, /, *args, **kwargs):
        return self._pool.submit(fn, *args, **kwargs)


sync_pool = ThreadPoolExecutor(max_workers=settings.API_SYNC_THREADS, thread_name_prefix="django-sync")


async def application(scope, receive, send):
    if scope["type"] != "http":
        return await django_application(scope, receive, send)
    # Django's handler enters a context of its own only when none is set: this one wins.
    async with ThreadSensitiveContext(executor=SharedPool(sync_pool)):
        await django_application(scope, receive, send)
