"""Real processes for end-to-end tests: a Celery worker of the one app, pointed at the test database."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.brokers import PrivateRedis  # noqa: F401 - the run's Redis (root conftest), fault tests
from scripts import dev_up

REPO = Path(__file__).resolve().parents[2]
BACKEND = REPO / "backend"


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the process that started us dies (Linux), so that a
    run killed by a timeout never leaves workers consuming someone else's queues."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Worker:
    """A `celery worker` subprocess. `kill()` sends SIGKILL to the whole process group (no clean-up)."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        name: str,
        pool: str = "threads",
        concurrency: int = 8,
        queues: str = "agent,batch,webhooks",
        log_path: Path | None = None,
        beat: bool = False,
    ):
        self.name = f"{name}@e2e"
        self.log_path = log_path or (REPO / "var" / f"e2e-{name}.log")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config.celery_app",
            "worker",
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--queues",
            queues,
            "--hostname",
            self.name,
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ]
        if beat:
            cmd += ["--beat", "--schedule", str(self.log_path.with_suffix(".beat"))]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            cmd,
            cwd=BACKEND,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def wait_ready(self, app, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}; log: {self.log()[-3000:]}")
            replies = app.control.ping(destination=[self.name], timeout=0.5) or []
            if replies:
                return
        raise TimeoutError(f"worker {self.name} did not answer a ping; log: {self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def wait_for(predicate, *, timeout: float, interval: float = 0.1, message: str = "condition", describe=None):
    """Poll `predicate` until it returns a truthy value; return it, or raise TimeoutError.

    `describe`, if given, is called on a timeout and its text joins the error: the state that explains it
    (a CI log keeps nothing else of a run's processes).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{describe()}" if describe is not None else ""
            raise TimeoutError(f"timed out after {timeout} s waiting for {message}{detail}")
        time.sleep(interval)


def point_celery_at(app, url: str, monkeypatch, *, result_url: str | None = None) -> None:
    """Make this process publish to and inspect broker `url` (Redis or RabbitMQ), restored after the test.

    Results go to `result_url` (a Redis URL; default `url`, which must then be Redis). Queue declarations,
    priorities and transport options follow the broker's kind as settings derive them (config/broker.py).
    Connection and producer pools are cached with the broker URL they were made with, so they are
    reset too; `monkeypatch` puts everything back, so one test's broker never leaks into the next.
    """
    from config import broker

    kind = broker.broker_kind(url)
    monkeypatch.setattr(app.conf, "broker_url", url)
    monkeypatch.setattr(app.conf, "result_backend", result_url or url)
    options = broker.transport_options(kind, visibility_timeout=3600)
    monkeypatch.setitem(app.conf, "broker_transport_options", options)
    batch_queue = "agent" if kind == broker.RABBITMQ else "batch"
    routes = broker.task_routes(kind, batch_queue=batch_queue, batch_rank=broker.MAX_PRIORITY)
    monkeypatch.setitem(app.conf, "task_routes", routes)
    monkeypatch.setitem(app.conf, "task_queues", broker.task_queues(kind))
    # app.amqp caches the queue table and the router it derived from the old configuration.
    monkeypatch.setattr(app.amqp, "_rtable", None)
    for cached in ("queues", "router", "default_queue"):
        monkeypatch.delitem(app.amqp.__dict__, cached, raising=False)
    monkeypatch.setattr(app, "_pool", None, raising=False)
    monkeypatch.setattr(app.amqp, "_producer_pool", None, raising=False)


def rabbitmqctl(*args: str, timeout: float = 60.0) -> str:
    """Run `rabbitmqctl` against this machine's RabbitMQ node; return its output, raise on failure."""
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
    return done.stdout


def delete_queues(url: str) -> None:
    """Delete the project's queues (with their messages) on a RabbitMQ broker, if they exist."""
    from kombu import Connection

    from config.broker import QUEUE_NAMES

    with Connection(url, connect_timeout=5) as connection:
        channel = connection.channel()
        for name in QUEUE_NAMES:
            channel.queue_delete(name)  # RabbitMQ answers ok for a queue that does not exist


class RabbitVhost:
    """A RabbitMQ virtual host of this test run only, on the machine's RabbitMQ (127.0.0.1:5672).

    Queues live in a vhost, so concurrent runs never share one; `delete()` removes it with all its queues.
    `purge()` deletes this run's queues between tests (a left-over message must not reach the next test).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5672,
        user: str = "guest",
        password: str = "guest",  # noqa: S107 - RabbitMQ's local default
    ):
        self.name = f"librarian-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.url = f"amqp://{user}:{password}@{host}:{port}/{self.name}"
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, user, ".*", ".*", ".*")

    def purge(self) -> None:
        delete_queues(self.url)

    def delete(self) -> None:
        rabbitmqctl("delete_vhost", self.name)


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Flower:
    """`celery flower` on a free loopback port with basic auth, as `make up` and compose start it.

    Its output goes to var/<log_name>-<port>.log; `stop()` ends it."""

    def __init__(self, env: dict[str, str], *, auth: tuple[str, str], log_name: str = "e2e-flower"):
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = REPO / "var" / f"{log_name}-{port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "config.flower",
                    "--address=127.0.0.1",
                    f"--port={port}",
                    f"--basic-auth={auth[0]}:{auth[1]}",
                ],
                cwd=BACKEND,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        import httpx

        def answers():
            if self.process.poll() is not None:
                log = self.log_path.read_text()[-2000:]
                raise RuntimeError(f"flower exited with {self.process.returncode}: {log}")
            try:
                return httpx.get(f"{self.base}/healthcheck", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, timeout=timeout, interval=0.1, message="flower to answer")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


class ApiServer:
    """The API as `make up` serves it (`dev_up.api_command`: gunicorn, uvicorn workers) in a subprocess on a
    free loopback port.

    Django's `live_server` is a WSGI server, which buffers a streamed response whole: event streams and
    waits are tested against this one. `url` is its base URL; `stop()` ends it."""

    def __init__(self, env: dict[str, str], *, log_name: str = "e2e-api"):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = REPO / "var" / f"{log_name}-{port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                dev_up.api_command(port),
                cwd=BACKEND,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        def answers():
            if self.process.poll() is not None:
                log = self.log_path.read_text()[-2000:]
                raise RuntimeError(f"the API server exited with {self.process.returncode}: {log}")
            try:
                return httpx.get(f"{self.url}/api/ping", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, timeout=timeout, interval=0.1, message="the API server to answer")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
