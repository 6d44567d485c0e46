"""Fault 4: the PostgreSQL connections of a worker are terminated while its jobs are mid-run.

Runs against PostgreSQL whatever database the rest of the suite uses (a database of its own, created and
dropped here), because terminating a backend connection is a PostgreSQL fault.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import psycopg
import pytest

from tests.e2e.harness import BACKEND, Worker, point_celery_at, wait_for

pytestmark = [pytest.mark.faults]

PG = os.environ.get("FAULTS_PG_URL", "postgres://postgres@127.0.0.1:5432")


@pytest.fixture
def pg_database():
    name = f"librarian_faults_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BACKEND,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


SUBMIT = """
from django.contrib.auth import get_user_model
from agent.types import AgentOptions
from apps.agent.services.jobs import job_create
owner, _ = get_user_model().objects.get_or_create(username="faults")
print(",".join(str(job_create(owner=owner, query=f"whales and the sea {i}", options=AgentOptions(top_k=2))[0].id) for i in range(4)))
"""


@pytest.mark.parametrize("pool_size", ["10", "0"], ids=["pooled", "persistent"])
def test_connection_drop_mid_run_ends_every_job_without_duplicates(
    pg_database, llm_server, redis_url, catalogue_vector_settings, monkeypatch, pool_size
):
    """With the connection pool (the default) a dead connection is replaced when it leaves the pool,
    so the jobs never see the fault; with one persistent connection per thread (DB_POOL_MAX_SIZE=0) the
    task sees the error, hands the attempt back and retries."""
    from config.celery_app import app

    llm_server.reset()
    llm_server.control(latency_ms=2000)
    vector = catalogue_vector_settings
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LLM_", "AGENT_", "VECTOR_", "CELERY_", "DATABASE_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=f"{PG}/{pg_database}",
        REDIS_URL=redis_url,
        CACHE_URL=redis_url,
        LLM_PROVIDER="openai_compatible",
        LLM_BASE_URL=llm_server.base_url,
        LLM_API_KEY="sk-faults",
        LLM_MODEL="test-model",
        AGENT_JOB_TIMEOUT_SEC="15",
        DB_POOL_MAX_SIZE=pool_size,
        VECTOR_DB_DIR=str(vector.dir),
        VECTOR_DB_MANIFEST=str(vector.manifest_path),
    )
    manage(env, "migrate", "--noinput", "-v", "0")
    worker = Worker(env, name=f"pgfault-{uuid.uuid4().hex[:6]}")
    try:
        point_celery_at(app, redis_url, monkeypatch)
        worker.wait_ready(app)
        ids = manage(env, "shell", "-c", SUBMIT).strip().splitlines()[-1].split(",")
        wait_for(
            lambda: len(llm_server.requests("/v1/chat/completions")) >= 4, timeout=30, message="4 LLM calls"
        )

        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                (pg_database,),
            ).fetchone()[0]
        assert killed >= 1  # the worker's connections were there, and are gone

        def ended():
            with psycopg.connect(f"{PG}/{pg_database}") as conn:
                rows = conn.execute("SELECT id::text, status, attempts FROM agent_agentjob").fetchall()
            return rows if rows and all(r[1] in ("succeeded", "failed", "cancelled") for r in rows) else None

        rows = wait_for(ended, timeout=60, interval=0.5, message="jobs to end after the connection drop")
        with psycopg.connect(f"{PG}/{pg_database}") as conn:
            traces = dict(
                conn.execute(
                    "SELECT job_id::text, count(DISTINCT attempt) FROM agent_tracestep GROUP BY job_id"
                ).fetchall()
            )
            results = conn.execute("SELECT count(*) FROM agent_agentjob WHERE result IS NOT NULL").fetchone()[
                0
            ]
    finally:
        worker.stop()

    assert sorted(r[0] for r in rows) == sorted(ids)
    assert {r[1] for r in rows} == {"succeeded"}, json.dumps(rows)
    # No duplicate effects: one stored result and one attempt's trace per job, whatever was retried.
    assert results == 4
    assert traces == {job_id: 1 for job_id in ids}
    if pool_size == "0":
        # The fault really hit running jobs: the task saw the database error and handed the attempt back.
        assert "database error while running job" in worker.log()
        assert any(r[2] == 2 for r in rows)
    else:
        assert {r[2] for r in rows} == {1}  # replaced transparently: no attempt was lost
