"""gunicorn as the shipped servers run it (`make up`, compose): `gunicorn -c config/gunicorn.conf.py config.wsgi`.

The bind address is given on the command line (-b). Requests that gunicorn refuses before Django sees them
(a request line over 8190 bytes: 414; a header too large or too many: 431; a malformed request: 400) get the
API's one error shape instead of gunicorn's HTML page.
"""

from __future__ import annotations

import json

workers = 2
# ASGI: uvicorn workers, so that open waits and event streams cost a coroutine, not a thread (live jobs).
worker_class = "uvicorn_worker.UvicornWorker"
timeout = 120
# Open event streams end with their job; a restart does not wait for them longer than this.
graceful_timeout = 5
# Not gunicorn's shared ~/.gunicorn/gunicorn.ctl: several stacks (make up, tests, benchmarks) run side by side.
control_socket_disable = True


def post_worker_init(worker):
    """gunicorn writes its own error responses through `gunicorn.util.write_error` (it has no hook for
    them); the worker's copy is replaced once the app (Django) is loaded."""
    from gunicorn import util

    from apps.core.http_errors import status_error_body

    def write_error(sock, status_int, reason, mesg):
        body = json.dumps(status_error_body(status_int)).encode()
        head = (
            f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        util.write_nonblock(sock, head.encode("latin1") + body)

    util.write_error = write_error
