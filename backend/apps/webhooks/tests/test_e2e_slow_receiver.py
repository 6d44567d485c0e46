"""End to end, with real processes: a slow webhook receiver does not slow job processing.

Two real Celery workers run as deployed (worker/start.sh): one on the "agent" and "batch" queues, one
on "webhooks". Jobs whose webhooks go to a receiver that takes seconds to answer must finish as fast
as jobs without webhooks, while their deliveries are still queued or in flight.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from apps.webhooks.testing import Reply, WebhookReceiver

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[4]
BACKEND = REPO / "backend"
JOBS = 4
RECEIVER_DELAY_SEC = 2.0


def _env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WEBHOOK_", "CELERY_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        PYTHONPATH=f"{BACKEND}{os.pathsep}{REPO}",
        PYTHON=sys.executable,
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        VAR_DIR=str(tmp_path),
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        CELERY_RESULT_BACKEND=redis_url,
        LLM_PROVIDER="stub",
        LLM_COST_MODE="paid",
        WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
        WEBHOOK_READ_TIMEOUT_SEC="10",
        WEBHOOK_ATTEMPT_DEADLINE_SEC="15",
        LOG_LEVEL="WARNING",
    )
    return env


def _run(args: list[str], env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(args, cwd=BACKEND, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _worker(env: dict[str, str], *, name: str, queues: str, concurrency: int, log: Path) -> subprocess.Popen:
    worker_env = dict(
        env,
        WORKER_POOL="threads",
        WORKER_CONCURRENCY=str(concurrency),
        WORKER_QUEUES=queues,
        WORKER_NAME=name,
    )
    return subprocess.Popen(
        [str(REPO / "worker" / "start.sh")],
        env=worker_env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.mark.timeout(120)
def test_slow_receiver_does_not_slow_job_processing(tmp_path, redis_server):
    # A Redis database of its own on the run's redis-server: the test neither sees nor disturbs other queues.
    env = _env(tmp_path, f"{redis_server.base_url}/2")
    python = sys.executable

    with WebhookReceiver(default=Reply(200, delay=RECEIVER_DELAY_SEC)) as receiver:
        # Workers boot while the database is migrated (they touch it only when a task arrives).
        workers = [
            _worker(env, name="e2e-agent", queues="agent,batch", concurrency=2, log=tmp_path / "agent.log"),
            _worker(
                env, name="e2e-webhooks", queues="webhooks", concurrency=JOBS, log=tmp_path / "webhooks.log"
            ),
        ]
        try:
            _run([python, "manage.py", "migrate", "-v0"], env, timeout=60)
            out = _run(
                [python, "-m", "apps.webhooks.tests.e2e_driver", receiver.url, str(JOBS), "2"],
                env,
                timeout=90,
            )
            report = json.loads(out.strip().splitlines()[-1])

            # Then: jobs with slow webhooks end as fast as jobs without (and long before any receiver
            # answer could have been awaited), while their deliveries are still being sent
            baseline, slow = report["baseline_ms"], report["slow_ms"]
            assert max(slow) < max(baseline) + 1000, report
            assert max(slow) < RECEIVER_DELAY_SEC * 1000, report
            assert report["delivered_when_jobs_done"] < JOBS, report

            # And every delivery arrives, signed
            requests = receiver.wait_for(JOBS, timeout=JOBS * RECEIVER_DELAY_SEC + 10)
            assert len(requests) == JOBS
            for request in requests:
                Webhook(report["secret"]).verify(request.body, request.headers)
        finally:
            for worker in workers:
                _stop(worker)
