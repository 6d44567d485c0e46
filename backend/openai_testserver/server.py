"""An OpenAI-compatible HTTP server for tests, benchmarks and local development (aiohttp).

Endpoints the official `openai` client uses:
    POST /v1/chat/completions   deterministic answer citing the `[id=...]` books it sees in the prompt
    POST /v1/embeddings         deterministic unit vectors (float list or base64)
    GET  /v1/models             the configured model ids
Control endpoints (tests change behaviour without restarting):
    GET/POST /_control          read / change the options (JSON object with any of `ServerOptions`)
    GET  /_requests[?path=...]  what was received: method, path, headers (Authorization too), peer, body,
                                time
    GET  /_stats                {"calls": n, "faults_served": m, "usage": {<API key>: {"calls",
                                "prompt_tokens", "completion_tokens"}}, "rate_limited": r}: the usage of the chat answers
                                served (a fault answers nothing), per key the client sent
    POST /_reset                options back to the start-up ones, requests and counters cleared

Faults apply to chat completions and embeddings. `rate_rpm` / `rate_tpm` make chat completions a provider
with a rate limit: beyond it the server answers 429 with `Retry-After` (see `RateBuckets`). The server binds 127.0.0.1 only and records headers in
memory on purpose: tests use it to prove which key a client sent. Never point it at real keys you care
about.

Longer than ~400 lines on purpose: it stands in for a whole provider (answers, streaming, embeddings,
faults, rate limits, usage accounting) behind one set of options that tests change at run time.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import hashlib
import http.client
import json
import logging
import math
import os
import re
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)

FAULTS = (
    "none",
    "429",
    "500",
    "401",
    "402",
    "403",
    "hang",
    "slow_drip",
    "malformed",
    "empty_choices",
    "no_content",
    "insufficient_quota",
    "stream_cut",
)
DEFAULT_MODELS = ("llama-3-8b-instruct", "gpt-4o-mini", "test-embedding")

# A book line of the grounded prompt: "1. [id=12] Moby Dick — Herman Melville (1851) | ...".
_BOOK_ID = re.compile(r"^\s*(?:\d+\.\s*)?\[id=([^\]]+)\]\s*([^—|\n]*)", re.MULTILINE)


@dataclass
class ServerOptions:
    """Behaviour switches; every field can be set at start-up and changed through POST /_control.

    latency_ms      delay before every answer (faults included)
    usage           include `usage` in responses (several real servers omit it)
    fault           one of FAULTS; `none` answers normally
    retry_after     seconds sent in `Retry-After` with 429 and 500 answers (None: no header)
    fail_times      serve the fault for the first N calls, then succeed (None: always)
    embedding_dim   vector size when the request does not ask for `dimensions`
    drip_interval_ms  pause between the bytes of a `slow_drip` answer
    hang_sec        how long `hang` holds a request before answering
    models          ids listed by /v1/models
    content         the text of every chat answer, instead of the deterministic one (None: computed);
                    e.g. a prompt-injection payload, to test what the client does with hostile output
    rate_rpm        chat completions allowed per minute (None: unlimited); beyond it, 429 + Retry-After
    rate_tpm        tokens per minute, counted as a provider counts them when the request arrives: the
                    prompt's tokens (this server's word count) plus the request's `max_tokens`
    rate_burst_sec  how many seconds of the rate a burst may use at once (the buckets' capacity); a real
                    provider enforces "600 RPM" as about 10 requests per second, i.e. 1 s
    stream_delay_ms pause before each chunk of a streamed answer (`"stream": true`)

    A streamed answer is sent as server-sent events, one chunk per word, then (with `stream_options`
    `include_usage` and `usage` on) a last chunk with the usage, then `data: [DONE]`. The fault
    `stream_cut` closes the connection after half the chunks of a streamed answer (a provider that fails
    mid-stream); a non-streamed answer then gets malformed JSON.
    """

    latency_ms: float = 0.0
    usage: bool = True
    fault: str = "none"
    retry_after: float | None = None
    fail_times: int | None = None
    embedding_dim: int = 16
    drip_interval_ms: float = 100.0
    hang_sec: float = 600.0
    models: tuple[str, ...] = field(default=DEFAULT_MODELS)
    content: str | None = None
    rate_rpm: float | None = None
    rate_tpm: float | None = None
    rate_burst_sec: float = 1.0
    stream_delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"fault={self.fault!r}: expected one of {', '.join(FAULTS)}")
        if self.fail_times is not None and self.fail_times < 0:
            raise ValueError("fail_times must be >= 0 or null")
        if self.embedding_dim < 1:
            raise ValueError("embedding_dim must be >= 1")
        if self.content is not None and not isinstance(self.content, str):
            raise ValueError("content must be a string or null")
        for name in ("rate_rpm", "rate_tpm"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or value <= 0):
                raise ValueError(f"{name} must be a number > 0 or null")
        if not isinstance(self.rate_burst_sec, int | float) or self.rate_burst_sec <= 0:
            raise ValueError("rate_burst_sec must be a number > 0")
        self.models = tuple(self.models)

    def replace(self, changes: dict[str, Any]) -> ServerOptions:
        """A copy with `changes` applied; raises ValueError for unknown or invalid fields."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
        try:
            return dataclasses.replace(self, **changes)
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["models"] = list(self.models)
        return data


class TokenBucket:
    """A token bucket: `rate` per second, at most `capacity` saved up; full at the start.

    A request heavier than the whole capacity is let through when the bucket is full (the level then goes
    below zero and refills from there), so a large request is slowed down rather than refused for ever.
    """

    def __init__(self, rate: float, capacity: float, clock=time.monotonic):
        self.rate, self.capacity, self._clock = rate, capacity, clock
        self.level, self._at = capacity, clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._at) * self.rate)
        self._at = now

    def wait_for(self, weight: float) -> float:
        """Seconds until `weight` can be taken (0: now). Takes nothing."""
        self._refill()
        missing = min(weight, self.capacity) - self.level
        return max(0.0, missing / self.rate)

    def take(self, weight: float) -> None:
        self._refill()
        self.level -= weight


class RateBuckets:
    """The server's RPM and TPM limits: a request passes when both buckets have room, and takes from both.

    The event loop runs one handler at a time, so the check and the take are atomic.
    """

    def __init__(self, options: ServerOptions):
        def bucket(per_minute: float | None) -> TokenBucket | None:
            if per_minute is None:
                return None
            rate = per_minute / 60
            return TokenBucket(rate, max(1.0, rate * options.rate_burst_sec))

        self.requests = bucket(options.rate_rpm)
        self.tokens = bucket(options.rate_tpm)

    def admit(self, tokens: int) -> float | None:
        """Take one request of `tokens`, or return the seconds to wait (the Retry-After) without taking."""
        pairs = [(b, w) for b, w in ((self.requests, 1), (self.tokens, tokens)) if b is not None]
        wait = max((b.wait_for(w) for b, w in pairs), default=0.0)
        if wait > 0:
            return wait
        for b, w in pairs:
            b.take(w)
        return None


class OpenAITestServer:
    """The application and its state. Run it with `start()` / `stop()` inside an event loop."""

    def __init__(self, *, record_limit: int = 10_000, **options: Any):
        self.initial_options = ServerOptions(**options)
        self.options = self.initial_options
        self.received: collections.deque[dict[str, Any]] = collections.deque(maxlen=record_limit)
        self.calls = 0
        self.faults_served = 0
        self.usage: dict[str, dict[str, int]] = {}
        self.rate_limited = 0
        self.rate_buckets = RateBuckets(self.options)
        self._runner: web.AppRunner | None = None

    # -- lifecycle --

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.add_routes(
            [
                web.post("/v1/chat/completions", self.chat_completions),
                web.post("/v1/embeddings", self.embeddings),
                web.get("/v1/models", self.models),
                web.get("/_control", self.get_control),
                web.post("/_control", self.post_control),
                web.get("/_requests", self.get_requests),
                web.get("/_stats", self.get_stats),
                web.post("/_reset", self.post_reset),
            ]
        )
        return app

    async def start(self, *, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0 picks a free port); return the port."""
        # handler_cancellation: a client that gives up (timeout) cancels its hung handler, so thousands
        # of abandoned `hang` requests do not pile up.
        self._runner = web.AppRunner(
            self.make_app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=4096, reuse_address=True)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- OpenAI endpoints --

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "invalid_request_error", "'messages' must be a list.")
        content = self.options.content if self.options.content is not None else answer_for(body["messages"])
        prompt_tokens = sum(_count_tokens(m.get("content")) for m in body["messages"] if isinstance(m, dict))
        max_tokens = body.get("max_tokens")
        weight = prompt_tokens + (max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 0)
        wait = self.rate_buckets.admit(weight)
        if wait is not None:
            self.rate_limited += 1
            # Retry-After in whole seconds, as providers send it, and the exact wait in retry-after-ms.
            headers = {"Retry-After": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1000))}
            return _error(
                429,
                "requests",
                "Rate limit reached (test server).",
                code="rate_limit_exceeded",
                headers=headers,
            )
        payload: dict[str, Any] = {
            "id": f"chatcmpl-testserver-{self.calls}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model") or ""),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
        }
        if self.options.usage:
            completion_tokens = _count_tokens(content)
            payload["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._respond(request, payload, stream_usage=include_usage)
        return await self._respond(request, payload)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if not isinstance(body, dict) or "input" not in body:
            return _error(400, "invalid_request_error", "'input' is required.")
        items = body["input"]
        if isinstance(items, str) or (isinstance(items, list) and items and isinstance(items[0], int)):
            items = [items]
        if not isinstance(items, list):
            return _error(400, "invalid_request_error", "'input' must be a string or a list.")
        dim = int(body.get("dimensions") or self.options.embedding_dim)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(items):
            vector = fake_embedding(item if isinstance(item, str) else json.dumps(item), dim)
            encoded: Any = (
                base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(_count_tokens(i if isinstance(i, str) else json.dumps(i)) for i in items)
        payload: dict[str, Any] = {"object": "list", "data": data, "model": str(body.get("model") or "")}
        if self.options.usage:
            payload["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return await self._respond(request, payload)

    async def models(self, request: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "librarian-testserver"}
            for m in self.options.models
        ]
        return web.json_response({"object": "list", "data": data})

    # -- control endpoints --

    async def get_control(self, request: web.Request) -> web.Response:
        return web.json_response(self.options.to_dict())

    async def post_control(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object")
            self.options = self.options.replace(changes)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if {"fault", "fail_times"} & set(changes):
            self.faults_served = 0  # a new fault plan starts counting from zero
        if {"rate_rpm", "rate_tpm", "rate_burst_sec"} & set(changes):
            self.rate_buckets = RateBuckets(self.options)  # a new limit starts with full buckets
        return web.json_response(self.options.to_dict())

    async def get_requests(self, request: web.Request) -> web.Response:
        path = request.query.get("path")
        items = [r for r in self.received if path is None or r["path"] == path]
        return web.json_response(items)

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "calls": self.calls,
                "faults_served": self.faults_served,
                "usage": self.usage,
                "rate_limited": self.rate_limited,
            }
        )

    async def post_reset(self, request: web.Request) -> web.Response:
        self.options = self.initial_options
        self.received.clear()
        self.calls = 0
        self.faults_served = 0
        self.usage = {}
        self.rate_limited = 0
        self.rate_buckets = RateBuckets(self.options)
        return web.json_response(self.options.to_dict())

    # -- internals --

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.calls += 1
        self.received.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": dict(request.headers),
                # The client's address: equal ports across requests prove a reused connection.
                "peer": list(
                    (request.transport.get_extra_info("peername") if request.transport else None) or ()
                )[:2],
                "body": body,
                "time": time.time(),
            }
        )
        return body

    def _take_fault(self) -> str:
        options = self.options
        if options.fault == "none":
            return "none"
        if options.fail_times is not None and self.faults_served >= options.fail_times:
            return "none"
        self.faults_served += 1
        return options.fault

    async def _respond(
        self, request: web.Request, payload: dict[str, Any], *, stream_usage: bool | None = None
    ) -> web.StreamResponse:
        """The answer, or the fault being served. `stream_usage` is None for a non-streamed request,
        else whether the streamed answer ends with a usage chunk."""
        options = self.options
        fault = self._take_fault()
        if options.latency_ms > 0:
            await asyncio.sleep(options.latency_ms / 1000)
        retry_headers = (
            {"Retry-After": _format_seconds(options.retry_after)} if options.retry_after is not None else {}
        )
        if stream_usage is not None and fault in ("none", "stream_cut"):
            return await self._stream(request, payload, usage=stream_usage, cut=fault == "stream_cut")
        if fault == "none":
            self._count_usage(request, payload)
            return web.json_response(payload)
        if fault == "429":
            return _error(
                429, "requests", "Rate limit reached.", code="rate_limit_exceeded", headers=retry_headers
            )
        if fault == "insufficient_quota":
            return _error(
                429, "insufficient_quota", "You exceeded your current quota.", code="insufficient_quota"
            )
        if fault == "402":
            return _error(402, "billing_error", "Payment required.", code="payment_required")
        if fault == "500":
            return _error(500, "server_error", "The server had an error.", headers=retry_headers)
        if fault == "401":
            # Echoes the key in full, unlike OpenAI (which masks it), so clients' scrubbing is tested.
            token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            return _error(
                401, "invalid_request_error", f"Incorrect API key provided: {token}.", code="invalid_api_key"
            )
        if fault == "403":
            return _error(403, "permission_denied", "You are not allowed to use this model.")
        if fault in ("malformed", "stream_cut"):
            return web.Response(
                status=200, text='{"id": "chatcmpl-broken", "choices": [', content_type="application/json"
            )
        if fault == "empty_choices":
            return web.json_response({**payload, "choices": [], "data": []})
        if fault == "no_content":
            choice = {"index": 0, "message": {"role": "assistant"}, "finish_reason": "stop"}
            return web.json_response({**payload, "choices": [choice]})
        if fault == "hang":
            await asyncio.sleep(options.hang_sec)
            self._count_usage(request, payload)
            return web.json_response(payload)
        return await self._drip(request, payload)

    def _count_usage(self, request: web.Request, payload: dict[str, Any]) -> None:
        """Add a chat answer's reported usage to its key's totals (what a provider would bill)."""
        usage = payload.get("usage")
        if payload.get("object") != "chat.completion" or not usage:
            return
        key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        totals = self.usage.setdefault(key, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0})
        totals["calls"] += 1
        totals["prompt_tokens"] += usage["prompt_tokens"]
        totals["completion_tokens"] += usage["completion_tokens"]

    async def _stream(
        self, request: web.Request, payload: dict[str, Any], *, usage: bool, cut: bool
    ) -> web.StreamResponse:
        """The answer as chat.completion.chunk events, one word each (see `ServerOptions`)."""
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        content = payload["choices"][0]["message"]["content"]
        words = re.findall(r"\s*\S+\s*|\s+", content)
        base = {k: payload[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
        chunks: list[dict[str, Any]] = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
        ]
        chunks += [{**base, "choices": [{"index": 0, "delta": {"content": w}}]} for w in words]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if usage and "usage" in payload:
            chunks.append({**base, "choices": [], "usage": payload["usage"]})
        if cut:
            chunks = chunks[: max(2, len(chunks) // 2)]
        try:
            for chunk in chunks:
                if self.options.stream_delay_ms > 0:
                    await asyncio.sleep(self.options.stream_delay_ms / 1000)
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if cut:
                # A provider that dies mid-answer: the connection ends without the final chunk.
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            self._count_usage(request, payload)  # billed as a whole answer once it was all sent
        except ConnectionError:
            pass  # the client went away (e.g. it cancelled the job)
        return response

    async def _drip(self, request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
        """Send a valid answer one byte at a time: each read is quick, the whole answer is not."""
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        data = json.dumps(payload).encode()
        try:
            for index in range(len(data)):
                await response.write(data[index : index + 1])
                await asyncio.sleep(self.options.drip_interval_ms / 1000)
            await response.write_eof()
        except ConnectionError:
            pass  # the client gave up, which is what a slow drip is for
        return response


def answer_for(messages: list[Any]) -> str:
    """Deterministic reply: the book lines (`[id=..] Title`) of the user messages, or an echo."""
    user = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    text = "\n".join(str(m.get("content") or "") for m in user)
    books = [(book_id, title.strip()) for book_id, title in _BOOK_ID.findall(text)]
    if books:
        return "Recommended: " + "; ".join(f"[id={book_id}] {title}".rstrip() for book_id, title in books)
    if "<books>" in text:
        return "No matching books were found in the catalogue."
    last = str(user[-1].get("content") or "") if user else ""
    return "Echo: " + " ".join(last.split())[:200]


def fake_embedding(text: str, dim: int) -> list[float]:
    """A deterministic unit vector for `text`: same text, same vector; different texts, different ones."""
    raw = b""
    counter = 0
    while len(raw) < dim * 4:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [int.from_bytes(raw[i * 4 : i * 4 + 4], "little") / 2**31 - 1.0 for i in range(dim)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


def _count_tokens(content: Any) -> int:
    """The server's own token count (words), deliberately different from clients' offline estimates."""
    if isinstance(content, list):  # content parts
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return len(str(content or "").split())


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _error(
    status: int, type_: str, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


# --- running it: in a thread, in a subprocess, or from the command line -------------------------------

HOST = "127.0.0.1"


class ServerHandle:
    """A running test server. `base_url` is what `LLM_BASE_URL` should be (ends in /v1).

    Use it as a context manager or call `stop()`. `control()`, `requests()`, `stats()` and `reset()` go
    through the HTTP control endpoints, so they work the same for a thread and a subprocess.
    """

    def __init__(self, port: int):
        self.port = port
        self.root_url = f"http://{HOST}:{port}"
        self.base_url = f"{self.root_url}/v1"

    def control(self, **options: Any) -> dict[str, Any]:
        """Change options at run time (e.g. `fault="429", retry_after=1`); returns all options."""
        return self._call("POST", "/_control", options)

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        """The requests received, oldest first; `path` filters, e.g. "/v1/chat/completions"."""
        return self._call("GET", "/_requests" + (f"?path={path}" if path else ""))

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_stats")

    def reset(self) -> dict[str, Any]:
        """Back to the start-up options; forget requests and counters."""
        return self._call("POST", "/_reset", {})

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            body = None if payload is None else json.dumps(payload)
            connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            data = json.loads(response.read() or b"null")
        finally:
            connection.close()
        if response.status != 200:
            raise ValueError(f"{method} {path} -> {response.status}: {data}")
        return data


class ThreadServerHandle(ServerHandle):
    """A server running on its own event loop in a daemon thread of this process."""

    def __init__(self, port: int, loop: asyncio.AbstractEventLoop, thread: threading.Thread):
        super().__init__(port)
        self._loop = loop
        self._thread = thread

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


class SubprocessServerHandle(ServerHandle):
    """A server running as `python -m openai_testserver` in a child process."""

    def __init__(self, port: int, process: subprocess.Popen):
        super().__init__(port)
        self.process = process

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_in_thread(port: int = 0, **options: Any) -> ThreadServerHandle:
    """Start a server on 127.0.0.1:`port` (0: a free one) in a daemon thread; return once it listens.

    `options` are `ServerOptions` fields (plus `record_limit`). Raises what start-up raised.
    """
    server = OpenAITestServer(**options)
    raise_open_files_limit()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            outcome["port"] = loop.run_until_complete(server.start(host=HOST, port=port))
        except BaseException as exc:  # reported to the caller below
            outcome["error"] = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(server.stop())
            loop.close()

    thread = threading.Thread(target=run, name="openai-testserver", daemon=True)
    thread.start()
    if not ready.wait(timeout=30):
        raise TimeoutError("The OpenAI test server did not start within 30 s.")
    if "error" in outcome:
        raise outcome["error"]
    return ThreadServerHandle(outcome["port"], loop, thread)


def start_subprocess(
    port: int = 0, *, startup_timeout: float = 30.0, **options: Any
) -> SubprocessServerHandle:
    """Start `python -m openai_testserver` as a child process; return once it listens.

    For end-to-end tests where another process (a Celery worker) calls the server. The child prints one
    JSON "ready" line on stdout; its logs go to stderr. Raises RuntimeError if it does not start.
    """
    ServerOptions(**{k: v for k, v in options.items() if k != "record_limit"})  # fail fast, here
    backend_dir = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [backend_dir, env.get("PYTHONPATH")]))
    argv = [
        sys.executable,
        "-m",
        "openai_testserver",
        "--port",
        str(port),
        "--options-json",
        json.dumps(options),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], startup_timeout)
    line = process.stdout.readline() if ready else b""
    process.stdout.close()  # the child writes nothing else to stdout
    try:
        announced = json.loads(line)
        return SubprocessServerHandle(int(announced["port"]), process)
    except (ValueError, KeyError, TypeError):
        process.kill()
        process.wait(timeout=10)
        raise RuntimeError(
            f"The OpenAI test server did not start (exit code {process.returncode})."
        ) from None


def raise_open_files_limit(target: int = 65536) -> None:
    """Raise this process's soft open-files limit towards `target` (benchmarks hold 1000s of sockets)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def serve_forever(*, port: int, options: dict[str, Any]) -> None:
    """Run until SIGINT/SIGTERM; print the ready line (JSON) on stdout once listening."""
    server = OpenAITestServer(**options)
    raise_open_files_limit()
    bound = await server.start(host=HOST, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"event": "ready", "port": bound, "base_url": f"http://{HOST}:{bound}/v1"}), flush=True)
    logger.warning("OpenAI test server listening: LLM_BASE_URL=http://%s:%d/v1", HOST, bound)
    try:
        await stop.wait()
    finally:
        await server.stop()
