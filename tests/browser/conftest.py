"""The stack as `make up` runs it, for a real browser: `collectstatic`, gunicorn with the shipped config
(scripts/dev_up.api_command: WhiteNoise serves the static files), a real Celery worker and Redis, on the
test database; and one headless Chromium for the whole session. `shipped_stack` answers with the stub LLM;
`streaming_stack` with the LLM test server, whose streamed answers can be slowed down."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import uuid

import httpx
import pytest

from scripts import dev_up
from tests.browser.harness import Browser, missing
from tests.e2e.conftest import (  # noqa: F401 - fixtures
    API_KEY,
    _database_url,
    e2e_vector_settings,
    llm_server,
)
from tests.e2e.harness import BACKEND, REPO, Worker, free_port, point_celery_at, wait_for
from tests.security.conftest import start_process, stop_process, wait_http

pytestmark = [pytest.mark.e2e]


@dataclasses.dataclass
class ShippedStack:
    base_url: str
    env: dict[str, str]
    api_log: object
    worker: Worker
    llm: object = None  # the LLM test server, when the stack uses it

    def api(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Token {token}"}, timeout=10)


@contextlib.contextmanager
def _shipped(*, redis_url: str, vector, llm_env: dict[str, str], name: str, var_dir):
    """collectstatic, the API (dev_up.api_command) and one worker on `redis_url` (a Redis database of its
    own, flushed before and after); stopped on exit."""
    import redis as redis_lib

    from config.celery_app import app

    redis_lib.Redis.from_url(redis_url).flushdb()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "AGENT_", "VECTOR_", "CELERY_"))}
    env.pop("DEBUG", None)  # as `make up` runs it: DEBUG as given, off by default
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=_database_url(),
        REDIS_URL=redis_url,
        CACHE_URL=redis_url,
        VECTOR_DB_DIR=str(vector.dir),
        VECTOR_DB_MANIFEST=str(vector.manifest_path),
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        # A VAR_DIR (so a STATIC_ROOT) of this stack's own: collectstatic never races another run's files.
        VAR_DIR=str(var_dir),
        **llm_env,
    )
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=BACKEND,
        env=env,
        check=True,
    )
    port = free_port()
    log = REPO / "var" / f"{name}-api-{port}.log"
    api = start_process(dev_up.api_command(port), env=env, log_path=log)
    worker = None
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/api/ping", timeout=60, process=api)
        worker = Worker(
            env, name=f"{name}-{uuid.uuid4().hex[:6]}", log_path=REPO / "var" / f"{name}-worker.log"
        )
        with pytest.MonkeyPatch.context() as mp:  # this process pings the worker on its broker only here
            point_celery_at(app, redis_url, mp)
            worker.wait_ready(app)
        yield ShippedStack(base_url=base, env=env, api_log=log, worker=worker)
    finally:
        if worker is not None:
            worker.stop()
        stop_process(api)
        redis_lib.Redis.from_url(redis_url).flushdb()


@pytest.fixture(scope="session")
def shipped_stack(django_db_setup, redis_server, e2e_vector_settings, tmp_path_factory):  # noqa: F811
    """Kept for the session; its worker consumes database 3 of this run's Redis, so it never takes the
    tasks of the e2e tests' own workers (database 0)."""
    with _shipped(
        redis_url=f"{redis_server.base_url}/3",
        var_dir=tmp_path_factory.mktemp("browser-var"),
        vector=e2e_vector_settings,
        llm_env={"LLM_PROVIDER": "stub"},
        name="browser",
    ) as stack:
        yield stack


@pytest.fixture(scope="session")
def streaming_stack(django_db_setup, redis_server, e2e_vector_settings, llm_server, tmp_path_factory):  # noqa: F811
    """The shipped stack with the project's OpenAI-compatible test server as the provider, which streams
    its answers word by word (`llm_server.control(stream_delay_ms=...)` paces them). Its own Redis
    database (4): its worker never takes the jobs of `shipped_stack`, nor its events."""
    llm_env = {
        "LLM_PROVIDER": "openai_compatible",
        "LLM_BASE_URL": llm_server.base_url,
        "LLM_API_KEY": API_KEY,
        "LLM_MODEL": "test-model",
    }
    with _shipped(
        redis_url=f"{redis_server.base_url}/4",
        var_dir=tmp_path_factory.mktemp("streaming-var"),
        vector=e2e_vector_settings,
        llm_env=llm_env,
        name="streaming",
    ) as stack:
        stack.llm = llm_server
        yield stack


@pytest.fixture
def demo_user(transactional_db, shipped_stack):
    """A staff user with a token and password, and the catalogue, committed (the processes see them)."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    call_command("loaddata", "libros_prueba", verbosity=0)
    password = uuid.uuid4().hex
    user = get_user_model().objects.create_superuser(
        username=f"demo-{uuid.uuid4().hex[:6]}", password=password
    )
    token = Token.objects.create(user=user).key
    return dataclasses.make_dataclass("Demo", ["username", "password", "token"])(
        user.username, password, token
    )


@pytest.fixture(scope="session")
def browser():
    problem = missing()
    if problem:
        pytest.fail(problem)
    chromium = Browser()
    yield chromium
    chromium.quit()


def wait_job(stack: ShippedStack, token: str, job_id: str, timeout: float = 60) -> dict:
    with stack.api(token) as client:

        def finished():
            job = client.get(f"/api/agent/jobs/{job_id}").json()
            return job if job["status"] in {"succeeded", "failed", "cancelled"} else None

        return wait_for(finished, timeout=timeout, interval=0.3, message=f"job {job_id} to finish")
