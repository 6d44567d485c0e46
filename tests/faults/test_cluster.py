"""A cluster on one machine: `python -m bench.cluster` as a test, on Redis and on RabbitMQ.

2 API processes, 3 worker processes with different queues, PostgreSQL, a Chroma server and a broker of
the run's own; CLUSTER_JOBS jobs (2,000) go through while the `agent` worker is SIGKILLed and restarted
and the broker is restarted once. Every job must end `succeeded` exactly once (one attempt's trace), and
each webhook must arrive once. The script prints the figures (docs/reliability.md, "A cluster on one
machine") and exits 1 on any loss or duplicate. It waits for the webhooks (every job's arrived, no delivery
pending) for bench.cluster.WEBHOOKS_BOUND_SEC after the last job ended, still restarting workers that exit.

CLUSTER_JOBS (2,000, as the issue asks and as docs/reliability.md measures it; about 2 minutes a broker on
a quiet 2-core machine) can be lowered for a quick local run. The script makes PostgreSQL databases of
its own whatever the run's DATABASE_URL, so the test runs once, in CI's PostgreSQL pass (`postgres_only`),
alone after the other tests (`cluster`, see the Makefile). On RabbitMQ it used to end a job or two
`failed` `max_attempts` on a loaded machine: live but slow attempts were taken over until the job ran out
of attempts; now only a dead (or hung) worker's attempt is (services/worker_liveness.py,
docs/reliability.md).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.e2e.harness import REPO

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.postgres_only, pytest.mark.cluster]

JOBS = int(os.environ.get("CLUSTER_JOBS", "2000"))


@pytest.mark.timeout(2400)
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_cluster_every_job_ends_exactly_once_through_a_worker_kill_and_a_broker_restart(broker, redis_server):
    # Database 6 of this run's own redis-server keeps results and the cache; PostgreSQL databases are the
    # script's own.
    env = {**os.environ, "BENCH_REDIS_URL": redis_server.base_url, "BENCH_REDIS_DB": "6"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.cluster", "--broker", broker, "--jobs", str(JOBS)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=2300,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert f"statuses {{'succeeded': {JOBS}}}" in done.stdout
    assert "lost 0, duplicated 0, without an answer 0" in done.stdout
    assert f"webhooks received {JOBS}: missing 0, duplicated 0" in done.stdout
    assert "live attempts taken over (ended, then dropped): 0" in done.stdout
    assert "SIGKILL the agent worker" in done.stdout and "broker started again" in done.stdout
