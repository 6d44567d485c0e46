"""gunicorn as the shipped servers run it (`make up`, compose): `python -m config.asgi_server -b HOST:PORT`,
which checks `WEB_CONCURRENCY` and runs `gunicorn -c config/gunicorn.conf.py config.asgi:application`.

The bind address is given on the command line (-b). The workers are uvicorn's (ASGI,
`config.asgi_server.ApiWorker`): an open wait or event stream is a coroutine, not a thread. That worker
keeps gunicorn's request limits and answers what it refuses before Django sees it (a request line over
8190 bytes: 414; a header too large or too many: 431; a malformed request: 400) in the API's one error
shape (docs/operations.md, "The API server").
"""

from __future__ import annotations

from config.asgi_server import web_concurrency

workers = web_concurrency()
worker_class = "config.asgi_server.ApiWorker"
timeout = 120
# Open event streams end with their job; a restart does not wait for them longer than this.
graceful_timeout = 5
# Not gunicorn's shared ~/.gunicorn/gunicorn.ctl: several stacks (make up, tests, benchmarks) run side by side.
control_socket_disable = True
