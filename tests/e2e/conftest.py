"""End-to-end fixtures: a real Redis, real Celery worker processes, the project's OpenAI-compatible test
server over loopback, a live API server, and a vector store built from the real catalogue fixture."""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from pathlib import Path

import pytest
import redis as redis_lib

from tests.e2e.harness import REPO, ApiServer, RabbitVhost, Worker, point_celery_at

API_KEY = "sk-server-e2e"


@pytest.fixture(scope="session")
def redis_url(redis_server) -> str:
    """Database 0 of this run's own redis-server (see `redis_server` in the root conftest)."""
    url = f"{redis_server.base_url}/0"
    redis_lib.Redis.from_url(url, socket_connect_timeout=2).flushdb()
    return url


#: Parametrize a test with `@BOTH_BROKERS` to run it on Redis and on RabbitMQ (the `broker` fixture).
BOTH_BROKERS = pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)


@pytest.fixture(scope="session")
def rabbit_vhost():
    """A vhost of this run's own on the machine's RabbitMQ, deleted at the end of the session."""
    vhost = RabbitVhost()
    yield vhost
    vhost.delete()


@pytest.fixture
def broker(request) -> str:
    """The broker of the `stack`: "redis" unless the test is parametrized with BOTH_BROKERS."""
    return getattr(request, "param", "redis")


@pytest.fixture
def broker_url(request, broker, redis_url) -> str:
    """The stack's broker URL: the run's Redis database, or the run's RabbitMQ vhost (emptied after)."""
    if broker == "redis":
        yield redis_url
        return
    vhost = request.getfixturevalue("rabbit_vhost")
    yield vhost.url
    vhost.purge()


@pytest.fixture(scope="session")
def e2e_vector_settings(catalogue_vector_settings):
    return catalogue_vector_settings


@pytest.fixture(scope="session")
def llm_server():
    from openai_testserver.server import start_in_thread

    server = start_in_thread(port=0)
    yield server
    server.stop()


def _database_url() -> str:
    from django.db import connection

    data = connection.settings_dict
    if data["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{data['NAME']}"
    host, port, user = (
        data.get("HOST") or "127.0.0.1",
        data.get("PORT") or 5432,
        data.get("USER") or "postgres",
    )
    password = f":{data['PASSWORD']}" if data.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}:{port}/{data['NAME']}"


@dataclasses.dataclass
class Stack:
    env: dict[str, str]
    llm: object
    live_url: str
    vector: object
    workers: list

    def start_worker(self, name: str | None = None, env: dict[str, str] | None = None, **kwargs) -> Worker:
        """Start a worker process with the stack's environment (plus `env`) and wait until it answers."""
        from config.celery_app import app

        worker = Worker(
            {**self.env, **(env or {})}, name=name or f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}", **kwargs
        )
        self.workers.append(worker)
        worker.wait_ready(app)
        return worker

    def start_api(self) -> ApiServer:
        """Serve the API from the ASGI server (a subprocess with the stack's environment); stopped with
        the stack. Returns it (`.url`)."""
        server = ApiServer(self.env)
        self.workers.append(server)
        server.wait_ready()
        return server


@pytest.fixture
def stack(
    transactional_db,
    live_server,
    redis_url,
    broker_url,
    e2e_vector_settings,
    llm_server,
    settings,
    monkeypatch,
):
    """Configure this process (the API) and the environment of worker processes alike.

    Redis serves the cache and Celery's results; the broker is `broker_url` (Redis or RabbitMQ)."""
    from config.celery_app import app

    llm_server.reset()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "AGENT_", "VECTOR_", "CELERY_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=_database_url(),
        REDIS_URL=redis_url,
        CACHE_URL=redis_url,
        CELERY_BROKER_URL=broker_url,
        SECRET_KEY=settings.SECRET_KEY,
        LLM_PROVIDER="openai_compatible",
        LLM_BASE_URL=llm_server.base_url,
        LLM_API_KEY=API_KEY,
        LLM_MODEL="test-model",
        LLM_TIMEOUT_SEC="5",
        LLM_MAX_RETRIES="1",
        AGENT_JOB_TIMEOUT_SEC="20",
        AGENT_RUNNING_GRACE_SEC="2",
        VECTOR_DB_DIR=str(e2e_vector_settings.dir),
        VECTOR_DB_MANIFEST=str(e2e_vector_settings.manifest_path),
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
    )
    # This process serves the API (live_server): same broker, cache, LLM and store as the workers.
    settings.LLM = dataclasses.replace(
        settings.LLM,
        provider="openai_compatible",
        base_url=llm_server.base_url,
        api_key=API_KEY,
        model="test-model",
    )
    settings.VECTOR = e2e_vector_settings
    settings.CELERY_BROKER_URL = broker_url
    settings.AGENT_EVENTS_REDIS_URL = redis_url
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url}
    }
    settings.AGENT_JOB_TIMEOUT_SEC = 20.0
    settings.AGENT_RUNNING_GRACE_SEC = 2.0
    settings.CELERY_TASK_ALWAYS_EAGER = False
    app.conf.task_always_eager = False
    point_celery_at(app, broker_url, monkeypatch, result_url=redis_url)
    from django.core.management import call_command

    call_command("loaddata", "libros_prueba", verbosity=0)
    s = Stack(env=env, llm=llm_server, live_url=live_server.url, vector=e2e_vector_settings, workers=[])
    yield s
    for worker in s.workers:
        worker.stop()
    redis_lib.Redis.from_url(redis_url).flushdb()


@pytest.fixture
def token(stack) -> str:
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create_user(username=f"e2e-{uuid.uuid4().hex[:6]}")
    return Token.objects.create(user=user).key


def keep_logs(stack: Stack, dest: Path = REPO / "var") -> None:
    for worker in stack.workers:
        if worker.log_path.exists():
            shutil.copy(worker.log_path, dest / worker.log_path.name)
