"""Brokers of a run's own, on free loopback ports, that the run may stop and start.

The machine's Redis (6379) and RabbitMQ (5672) are shared by every run: restarting them would cut everyone
else's workers. Fault tests (tests/faults/test_broker_faults.py) and the cluster (bench/cluster.py) restart
these instead. Both expose `url`, `start()`, `stop()`; `remove()` also deletes their data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it dies (Linux)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _wait(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


class PrivateRedis:
    """A redis-server on a free loopback port, keeping nothing on disk.

    Every test run owns its Redis this way (the root conftest's `redis_server`): two runs on one machine
    (two checkouts, or pytest-xdist workers) never consume or flush each other's queues, and a test may
    stop it without disturbing anyone. `start()` after `stop()` comes back on the same port, as a
    restarted server would.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="librarian-redis-"))
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/0"

    def start(self, *, new_port_on_failure: bool = False) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        for _ in range(5):
            self.process = subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
                + ["--dir", str(self.directory)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
            try:
                _wait(self._answers, timeout=10, what=f"redis-server on port {self.port}")
                return
            except TimeoutError:
                self.stop()
                if not new_port_on_failure:
                    raise
                self.port = _free_port()  # another process took the port between our probe and the bind
        raise RuntimeError("could not start a private redis-server")

    def _answers(self) -> bool:
        import redis

        if self.process is not None and self.process.poll() is not None:
            raise TimeoutError("redis-server exited")
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class PrivateRabbit:
    """A RabbitMQ node of this test run only, on free ports, so that stopping it disturbs nobody else.

    The machine's node (127.0.0.1:5672) is shared by every run: restarting it would cut their workers.
    This one runs the same server binary (`rabbitmq-server`) with its own node name, ports, data and
    config. A start takes 5-30 s (Erlang boot; more on a busy machine). `stop()` is a clean shutdown
    (SIGTERM, as a service manager's restart); durable queues and persistent messages survive it.
    """

    def __init__(self) -> None:
        self.port, self.dist_port = _free_port(), _free_port()
        self.node = f"librarian-{os.getpid()}-{uuid.uuid4().hex[:4]}@localhost"
        # The server runs as the `rabbitmq` user: its directory must be reachable and writable by it.
        self.directory = Path(tempfile.mkdtemp(prefix="librarian-rabbit-", dir="/tmp"))
        self.directory.chmod(0o777)
        config = self.directory / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        config.chmod(0o644)
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> None:
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.directory / "pid"),
        }
        with open(self.directory / "server.out", "ab") as out:
            self.process = subprocess.Popen(
                ["rabbitmq-server"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.directory
            )
        _wait(self._answers, timeout=timeout, what=f"RabbitMQ node {self.node}")

    def _answers(self) -> bool:
        from kombu import Connection

        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"rabbitmq-server exited: {(self.directory / 'server.out').read_text()[-2000:]}"
            )
        try:
            with Connection(self.url, connect_timeout=1) as connection:
                connection.connect()
            return True
        except Exception:
            return False

    def stop(self) -> None:
        pid_file = self.directory / "pid"
        if self.process is None or self.process.poll() is not None:
            return
        if pid_file.exists() and pid_file.read_text().strip():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            self.process.wait(timeout=10)
        pid_file.unlink(missing_ok=True)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
