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

Only the live requests need the event loop: a job GET with `?wait=` and a job's `/events` stream. Every
other request goes whole to Django's WSGI handler on the same pool (a2wsgi's WSGIMiddleware): one hop from
the loop to a thread and back per request, as a threaded WSGI server does, instead of one per sync call
(the request signals, the view, the response's close). There a job GET that does not wait runs its plain DRF
view, not the async live view (`live.PlainUnlessOpenMiddleware`: no event loop made for it). Measured on this 2-core machine, runs of
`python -m bench --only throughput` and `--only polling` interleaved (docs/benchmarks.md): POSTs accepted
per second by 2 processes 145-223 (median 201, 6 runs) this way against 140-171 (median 151, 5 runs)
through Django's ASGI handler; the trivial `/api/ping` 1,702 requests/s against 786.

With DEBUG on, static files (the admin's, the API docs') are served too, as `runserver` would.
"""

import os
import re
from concurrent.futures import Executor, ThreadPoolExecutor
from urllib.parse import parse_qsl

from a2wsgi import WSGIMiddleware
from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler, StaticFilesHandler
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application
from django.urls import Resolver404, resolve

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()
wsgi_django = get_wsgi_application()
if settings.DEBUG:
    django_application = ASGIStaticFilesHandler(django_application)
    wsgi_django = StaticFilesHandler(wsgi_django)

from apps.agent.apis import live  # noqa: E402 - once Django is set up (get_asgi_application)

_WAIT = re.compile(rb"(^|&)wait(=|&|$)")


def is_live(scope) -> bool:
    """Whether a request may stay open waiting for a job (it then runs on the event loop): it resolves
    (apps/agent/urls.py) to a job's event stream, or to the job GET with a `wait` parameter. Resolving
    costs ~35 us a request (a trivial request takes ~600 us), the price of one URL map instead of two."""
    try:
        view = resolve(scope["path"]).func
    except Resolver404:
        return False
    if scope["method"] != "GET":
        return False
    return view is live.job_events_view or (view is live.job_detail and asks_to_wait(scope["query_string"]))


def asks_to_wait(query: bytes) -> bool:
    """Whether the query string has a `wait` parameter as Django will read it (`request.GET`): a
    percent-encoded key (`w%61it`) is decoded first, or that request would wait on a thread."""
    if b"%" not in query:
        return bool(_WAIT.search(query))
    return any(key == "wait" for key, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True))


class SharedPool(Executor):
    """The executor of one request's thread-sensitive context: its calls go to the process's pool."""

    def __init__(self, pool: ThreadPoolExecutor):
        self._pool = pool

    def submit(self, fn, /, *args, **kwargs):
        return self._pool.submit(fn, *args, **kwargs)


sync_pool = ThreadPoolExecutor(max_workers=settings.API_SYNC_THREADS, thread_name_prefix="django-sync")
wsgi_application = WSGIMiddleware(wsgi_django, workers=settings.API_SYNC_THREADS)
wsgi_application.executor = sync_pool  # one pool per process for every request's sync code


async def application(scope, receive, send):
    if scope["type"] != "http":
        return await django_application(scope, receive, send)
    if not is_live(scope):
        return await wsgi_application(scope, receive, send)
    # Django's handler enters a context of its own only when none is set: this one wins.
    async with ThreadSensitiveContext(executor=SharedPool(sync_pool)):
        await django_application(scope, receive, send)
