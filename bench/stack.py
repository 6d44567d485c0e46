"""The processes a benchmark runs against, started and torn down by the benchmark itself.

A `Stack` is a fresh database (a copy of a migrated template: a SQLite file in a temporary directory, or a
PostgreSQL database created from a template when DATABASE_URL names PostgreSQL), Redis database 9
(flushed), gunicorn for the API on a free port, Celery worker(s) through `worker/start.sh`, and the
project's OpenAI-compatible test server, each a child process in its own session. `Stack.stop()` ends
exactly the processes it started (by process group id), then drops the database.

The bench process itself never imports Django: it talks HTTP to the API and sends bare Celery tasks by
name with a plain `Celery` app, so it cannot share state with what it measures.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BACKEND = REPO / "backend"
PY = sys.executable
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
#: BENCH_REDIS_DB: the database, or a comma-separated list to take the first one no other run holds.
REDIS_DB_CANDIDATES = [int(db) for db in os.environ.get("BENCH_REDIS_DB", "9").split(",") if db.strip()]
REDIS_DB = REDIS_DB_CANDIDATES[0]
#: The catalogue fixture's store, built once (incrementally: an unchanged fixture costs no embedding).
VECTOR_DIR = Path(os.environ.get("BENCH_VECTOR_DIR") or REPO / "var" / "bench_vector_db")
API_KEY = "sk-bench"
USERNAME = "bench"
#: What compose.yaml and scripts/dev_up.py run: 2 gunicorn processes with uvicorn workers (ASGI). The
#: WSGI server it replaced (2 processes of 8 threads) is measured beside it where the change matters.
#: BENCH_API=2x8 changes the processes (x threads, for WSGI).
API_WORKERS, API_THREADS = (int(n) for n in os.environ.get("BENCH_API", "2x8").split("x"))
API_SERVERS = ("asgi", "wsgi")

# Queries the benchmarks cycle through. The worker's query-embedding cache (agent.embeddings, LRU) holds
# each one after its first use, as it holds the questions users repeat; the embedding itself is
# measured by the retrieval benchmark.
QUERIES = [
    "a whale hunt at sea",
    "novela sobre la guerra civil española",
    "detective story in Victorian London",
    "libros de fantasía con dragones",
    "a dystopia where books are burned",
    "poemas de amor",
    "the history of the universe explained simply",
    "una familia a lo largo de varias generaciones",
    "children's book about a talking animal",
    "recetas de cocina mexicana",
    "philosophy of ethics and virtue",
    "a ghost haunting an old house",
    "romance in the English countryside",
    "viaje a la luna",
    "a robot that wants to be human",
    "crimen en un tren",
    "coming of age in a small town",
    "un caballero que lucha contra molinos",
    "space opera with galactic empires",
    "memorias de la infancia en el campo",
]


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the process that started us dies (Linux), so that a
    run killed by a timeout never leaves workers consuming someone else's queues."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_url() -> str:
    return f"{REDIS_BASE}/{REDIS_DB}"


OWNER_KEY = "librarian-bench:owner"


def _redis():
    import redis

    return redis.Redis.from_url(redis_url(), socket_connect_timeout=2)


def claim_redis() -> None:
    """Make one of the candidate Redis databases ours for this run (`REDIS_DB`), or fail at once.

    Two runs on one database would flush each other's queues and steal each other's tasks, and wait
    for ever. A claim left by a run that died (its process is gone) is taken over.
    """
    global REDIS_DB
    holders = []
    for db in REDIS_DB_CANDIDATES:
        REDIS_DB = db
        client = _redis()
        if client.set(OWNER_KEY, os.getpid(), nx=True):
            return
        owner = int(client.get(OWNER_KEY) or 0)
        if not owner or owner == os.getpid() or not Path(f"/proc/{owner}").exists():
            client.set(OWNER_KEY, os.getpid())
            return
        holders.append(f"{db} (pid {owner})")
    raise RuntimeError(
        f"Redis database(s) {', '.join(holders)} in use by other benchmark runs; "
        "set BENCH_REDIS_DB to a database nobody else uses"
    )


def release_redis() -> None:
    client = _redis()
    if int(client.get(OWNER_KEY) or 0) == os.getpid():
        client.flushdb()


def flush_redis() -> None:
    client = _redis()
    client.flushdb()
    client.set(OWNER_KEY, os.getpid())


def _postgres_url() -> str | None:
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith(("postgres://", "postgresql://", "pgsql://")) else None


def postgres() -> bool:
    """Whether this run uses PostgreSQL (DATABASE_URL names it) rather than a temporary SQLite file."""
    return _postgres_url() is not None


def _pg_admin(url: str, sql: str) -> None:
    import psycopg

    admin = re.sub(r"/[^/?]*(\?|$)", r"/postgres\1", url.split("://", 1)[1], count=1)
    with psycopg.connect(f"postgresql://{admin}", autocommit=True) as conn:
        conn.execute(sql)


def _pg_with_name(url: str, name: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://" + re.sub(r"/[^/?]*(\?|$)", rf"/{name}\1", rest, count=1)


def base_env(tmp: Path) -> dict[str, str]:
    """The environment every child process gets: nothing from the developer's .env leaks in."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {k: v for k, v in os.environ.items() if k in keep}
    # Knobs a comparison may set for a whole run, e.g. `CELERY_WORKER_SEND_TASK_EVENTS=false python -m bench`;
    # any setting as BENCH_ENV_<NAME>, e.g. `BENCH_ENV_LLM_STREAM=false` gives the processes LLM_STREAM=false.
    env.update({k: v for k, v in os.environ.items() if k.startswith("CELERY_WORKER_")})
    env.update({k[len("BENCH_ENV_") :]: v for k, v in os.environ.items() if k.startswith("BENCH_ENV_")})
    url = redis_url()
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        PYTHON=PY,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(BACKEND),
        SECRET_KEY="bench-secret-key-not-for-production",  # noqa: S106 - throwaway processes
        DEBUG="false",
        LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "INFO"),
        VAR_DIR=str(tmp),
        REDIS_URL=url,
        CACHE_URL=url,
        CELERY_BROKER_URL=url,
        CELERY_RESULT_BACKEND=url,
        # Benchmarks submit thousands of jobs per minute from one user.
        THROTTLE_JOB_CREATE="100000000/min",
        LLM_PROVIDER="stub",
        LLM_MODEL="test-model",
        LLM_API_KEY="",
        LLM_BASE_URL="",
        VECTOR_DB_DIR=str(VECTOR_DIR),
        VECTOR_DB_MANIFEST=str(VECTOR_DIR / "manifest.json"),
        HF_HUB_OFFLINE="1",
        ANONYMIZED_TELEMETRY="False",
    )
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    ready: Callable[[], bool] = lambda: True

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def terminate(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        # The whole group, also when its leader is gone: a worker that exited by itself (an "Unrecoverable
        # error") leaves its embedded beat behind, which would go on publishing to whatever broker listens
        # on that port later. The group id stays reserved while any member lives.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)


class Template:
    """A migrated database with the catalogue and the bench user, copied for each benchmark."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        claim_redis()
        self.pg_url = _postgres_url()
        self.name = f"bench_tpl_{os.getpid()}"
        env = base_env(tmp)
        if self.pg_url:
            _pg_admin(self.pg_url, f'DROP DATABASE IF EXISTS "{self.name}"')
            _pg_admin(self.pg_url, f'CREATE DATABASE "{self.name}"')
            env["DATABASE_URL"] = _pg_with_name(self.pg_url, self.name)
        else:
            env["DATABASE_URL"] = f"sqlite:///{tmp / 'template.sqlite3'}"
        started = time.perf_counter()
        # One Django start-up for all of it (each costs seconds on a busy 2-core machine). The store is
        # built incrementally: an unchanged catalogue costs no embedding after the first run.
        script = "; ".join(
            [
                "from django.core.management import call_command as c",
                "c('migrate', '--noinput', verbosity=0)",
                "c('loaddata', 'libros_prueba', verbosity=0)",
                "c('build_vector_db', verbosity=0)",
                f"c('create_api_token', {USERNAME!r})",
            ]
        )
        self.token = manage(env, "shell", "-c", script).splitlines()[-1].strip()
        log(f"template database and vector store ready in {time.perf_counter() - started:.1f} s")

    def database_url(self, label: str) -> str:
        """A fresh copy of the template for one benchmark."""
        name = f"bench_{label}_{uuid.uuid4().hex[:6]}"
        if self.pg_url:
            _pg_admin(self.pg_url, f'CREATE DATABASE "{name}" TEMPLATE "{self.name}"')
            return _pg_with_name(self.pg_url, name)
        path = self.tmp / f"{name}.sqlite3"
        shutil.copyfile(self.tmp / "template.sqlite3", path)
        return f"sqlite:///{path}"

    def drop(self, database_url: str) -> None:
        if self.pg_url:
            name = database_url.rsplit("/", 1)[1].split("?")[0]
            with contextlib.suppress(Exception):
                _pg_admin(self.pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            path = Path(database_url.removeprefix("sqlite:///"))
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        if self.pg_url:
            with contextlib.suppress(Exception):
                _pg_admin(self.pg_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        release_redis()


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [PY, "manage.py", *args], cwd=BACKEND, env=env, text=True, capture_output=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


@dataclass
class Stack:
    """One benchmark's processes. Use as a context manager: everything is stopped on exit."""

    template: Template
    label: str
    procs: list[Proc] = field(default_factory=list)
    api_url: str = ""
    llm_base_url: str = ""
    llm_root_url: str = ""

    def __post_init__(self) -> None:
        flush_redis()
        self.logdir = self.template.tmp / self.label
        self.logdir.mkdir(exist_ok=True)
        self.database_url = self.template.database_url(self.label)
        self.env = base_env(self.template.tmp)
        self.env["DATABASE_URL"] = self.database_url
        self.token = self.template.token

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:  # the logs live in a temporary directory: show them before it goes
            for proc in self.procs:
                log(f"{self.label}: the end of {proc.name}'s log:\n{proc.log_tail(6000)}")
        self.stop()

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Proc:
        log_path = self.logdir / f"{name}.log"
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(
                cmd,
                cwd=BACKEND,
                env=env or self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def start(
        self, *, worker: tuple[str, int] | None = None, llm_latency_ms: float | None = None
    ) -> tuple[Proc, Proc | None]:
        """Start the API, and the LLM test server and a worker (pool, concurrency) when given, all at
        once (each takes seconds to import its world); return (api, worker) once every one is ready."""
        waits = []
        if llm_latency_ms is not None:
            waits.append(self.start_llm_server(llm_latency_ms, wait=False))
        api = self.start_api(wait=False)
        waits.append(api)
        worker_proc = None
        if worker is not None:
            worker_proc = self.start_worker(pool=worker[0], concurrency=worker[1], wait=False)
            waits.append(worker_proc)
        started = time.perf_counter()
        for proc in waits:
            proc.wait_ready()
        log(f"{self.label}: processes ready in {time.perf_counter() - started:.1f} s")
        return api, worker_proc

    def start_llm_server(self, latency_ms: float, *, wait: bool = True, **options: Any) -> Proc:
        """The OpenAI-compatible test server as a child process; points the stack's LLM at it. `options`
        are more of its ServerOptions (e.g. `rate_rpm`)."""
        port = free_port()
        options = json.dumps({"latency_ms": latency_ms, "record_limit": 100, **options})
        proc = self._spawn(
            "llm",
            [PY, "-m", "openai_testserver", "--port", str(port), "--options-json", options],
        )
        proc.ready = lambda: _http_ok(f"http://127.0.0.1:{port}/v1/models")
        self.llm_base_url = f"http://127.0.0.1:{port}/v1"
        self.llm_root_url = f"http://127.0.0.1:{port}"
        self.env.update(LLM_PROVIDER="openai_compatible", LLM_BASE_URL=self.llm_base_url, LLM_API_KEY=API_KEY)
        if wait:
            proc.wait_ready()
        return proc

    def start_api(
        self,
        *,
        server: str = "",
        workers: int = API_WORKERS,
        threads: int = API_THREADS,
        wait: bool = True,
    ) -> Proc:
        """The API under gunicorn: `asgi` (uvicorn workers, as shipped) or `wsgi` (threads, as before).
        Default: BENCH_API_SERVER, else `asgi` (e.g. `BENCH_API_SERVER=wsgi python -m bench --only throughput`
        compares a whole run under the WSGI server)."""
        server = server or os.environ.get("BENCH_API_SERVER", "asgi")
        port = free_port()
        if server == "asgi":
            app = ["config.asgi:application", "--worker-class", "config.asgi_server.ApiWorker"]
        else:
            app = ["config.wsgi", "--threads", str(threads)]
        proc = self._spawn(
            f"api-{server}",
            [
                PY,
                "-m",
                "gunicorn",
                *app,
                "-b",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
                "--timeout",
                "120",
                "--backlog",
                "4096",
            ],
        )
        self.api_url = f"http://127.0.0.1:{port}"
        proc.ready = lambda: _http_ok(f"{self.api_url}/api/ping")
        if wait:
            proc.wait_ready()
        return proc

    def start_worker(
        self, *, pool: str, concurrency: int, name: str = "bench", wait: bool = True, **env: str
    ) -> Proc:
        """A worker through worker/start.sh, as deployments start it; by default returns once it answers
        a ping (the worker loads the embedding model and opens the store before that)."""
        worker_env = {
            **self.env,
            "WORKER_POOL": pool,
            "WORKER_CONCURRENCY": str(concurrency),
            "WORKER_NAME": name,
            "WORKER_QUEUES": "agent,batch,webhooks",
            **env,
        }
        proc = self._spawn(
            f"worker-{name}",
            [str(REPO / "worker" / "start.sh"), "--without-mingle", "--without-gossip"],
            env=worker_env,
        )
        app = celery_app()
        hostname = f"{name}@{socket.gethostname()}"

        proc.ready = lambda: bool(app.control.ping(destination=[hostname], timeout=0.5))
        if wait:
            proc.wait_ready()
        return proc

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each process (group) of the stack, by name."""
        from bench.client import cpu_seconds

        return {proc.name: cpu_seconds(proc.pid) for proc in self.procs if proc.alive()}

    def stop(self) -> None:
        started = time.perf_counter()
        for proc in self.procs:
            proc.terminate()
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        log(f"{self.label}: stopped in {time.perf_counter() - started:.1f} s")
        self.template.drop(self.database_url)
        flush_redis()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


_APP: Any = None


def celery_app() -> Any:
    """A plain Celery app on the benchmarks' Redis; tasks are sent by name (no Django here)."""
    global _APP
    if _APP is None:
        from celery import Celery

        url = redis_url()
        _APP = Celery("bench", broker=url, backend=url)
        _APP.conf.update(
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
            task_default_queue="agent",
            broker_connection_retry_on_startup=True,
        )
    return _APP


@contextlib.contextmanager
def temp_root():
    with tempfile.TemporaryDirectory(prefix="librarian-bench-") as tmp:
        yield Path(tmp)


def shipped_worker() -> tuple[str, int]:
    """The pool and concurrency worker/start.sh uses by default: what the benchmarks call "shipped".

    BENCH_WORKER=pool:concurrency replaces it (to compare two versions of the code at one configuration).
    """
    forced = os.environ.get("BENCH_WORKER", "")
    if forced:
        pool, _, concurrency = forced.partition(":")
        return pool, int(concurrency)
    script = (REPO / "worker" / "start.sh").read_text()
    pool = re.search(r"WORKER_POOL:-([a-z]+)", script)
    concurrency = re.search(r"WORKER_CONCURRENCY:-(\d+)", script)
    if not pool or not concurrency:
        raise RuntimeError("worker/start.sh has no WORKER_POOL / WORKER_CONCURRENCY defaults")
    return pool[1], int(concurrency[1])
