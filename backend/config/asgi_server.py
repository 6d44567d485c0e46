"""The API's HTTP server: uvicorn workers under gunicorn (`worker_class` in config/gunicorn.conf.py).

uvicorn's parser (httptools) has no limit on the request line, the size of a header or the number of
headers, and answers a malformed request with a plain-text 400. This worker keeps gunicorn's limits and
answers every refusal in the API's one error shape, as the WSGI gunicorn did (docs/operations.md, "The API
server"): a request line over `LIMIT_REQUEST_LINE` bytes is 414, a header field over
`LIMIT_REQUEST_FIELD_SIZE` bytes or more than `LIMIT_REQUEST_FIELDS` headers is 431, a malformed request 400.
Each refusal closes the connection before any of the request reaches Django.

`python -m config.asgi_server -b HOST:PORT` starts it as `make up` and compose do (`main`).
"""

from __future__ import annotations

import json
import os
import sys
from http import HTTPStatus
from pathlib import Path

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from core.env import Env

#: gunicorn's settings for the API (worker class, processes, timeouts).
GUNICORN_CONF = Path(__file__).resolve().with_name("gunicorn.conf.py")

#: gunicorn's defaults (limit_request_line, limit_request_fields, limit_request_field_size), with the
#: request line counted as its target (the URL), as h11 and httptools see it.
LIMIT_REQUEST_LINE = 8190
LIMIT_REQUEST_FIELDS = 100
LIMIT_REQUEST_FIELD_SIZE = 8190


#: The refusals' bodies in the error shape, made by `ApiWorker.load_wsgi` once Django is set up.
REFUSAL_BODIES: dict[int, bytes] = {}


def refusal_bytes(status: int) -> bytes:
    """A complete HTTP/1.1 response in the API's error shape, for a request refused before the app."""
    body = REFUSAL_BODIES.get(status) or json.dumps({"error": {"code": "bad_request"}}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin1") + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with gunicorn's request limits and JSON refusals."""

    #: The status of a request refused by a parser callback (httptools turns the callback's exception into
    #: a parse error, which uvicorn answers through `send_400_response`).
    _refusal: int | None = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0

    def _refuse_request(self, status: int) -> None:
        self._refusal = status
        raise ValueError(f"refused: {status}")

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > LIMIT_REQUEST_LINE:
            self._refuse_request(HTTPStatus.REQUEST_URI_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > LIMIT_REQUEST_FIELDS or len(name) + len(value) > LIMIT_REQUEST_FIELD_SIZE:
            self._refuse_request(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        self._refuse(self._refusal or HTTPStatus.BAD_REQUEST)

    def _refuse(self, status: int) -> None:
        if not self.transport.is_closing():
            self.transport.write(refusal_bytes(status))
            self.transport.close()


class ApiWorker(UvicornWorker):
    """gunicorn's worker class for the API: uvicorn's event loop (uvloop) and the limited protocol."""

    CONFIG_KWARGS = {"loop": "auto", "http": LimitedHttpToolsProtocol}

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.refusal_bodies_load()

    @staticmethod
    def refusal_bodies_load() -> None:
        """Fill `REFUSAL_BODIES`. gunicorn imports this class before the app: the error shape's module
        (DRF) can only be imported once the app has set Django up."""
        from apps.core.http_errors import status_error_body

        for status in (
            HTTPStatus.BAD_REQUEST,
            HTTPStatus.REQUEST_URI_TOO_LONG,
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
        ):
            REFUSAL_BODIES[status] = json.dumps(status_error_body(status)).encode()


def web_concurrency() -> int:
    """The API's processes: gunicorn's usual `WEB_CONCURRENCY`; 2 fits the 2-core machine the benchmarks
    run on (about one process per core). Blank means the default, as for every variable (core.env)."""
    return Env().int("WEB_CONCURRENCY", 2, minimum=1)


def main(argv: list[str] | None = None) -> None:
    """gunicorn with `GUNICORN_CONF` serving `config.asgi:application`; `argv` (default: this process's
    arguments) adds gunicorn options, e.g. `-b 127.0.0.1:8000`.

    `WEB_CONCURRENCY` is checked here, before gunicorn is imported: gunicorn reads it with a bare `int()`
    when its settings module loads, so a blank value (which means "the default" here) or a word ended it
    in a traceback of its own before any of our configuration ran. Now a bad value is refused naming the
    variable, and gunicorn gets the number.
    """
    os.environ["WEB_CONCURRENCY"] = str(web_concurrency())
    options = sys.argv[1:] if argv is None else argv
    sys.argv = ["gunicorn", "-c", str(GUNICORN_CONF), "config.asgi:application", *options]
    from gunicorn.app.wsgiapp import run

    run()


if __name__ == "__main__":
    main()
