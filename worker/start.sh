#!/usr/bin/env bash
# Start a Celery worker of the one app (config.celery_app). Used by `make up`, compose and the tests.
# The pool and concurrency are what the concurrency benchmark chose (docs/benchmarks.md, "Choosing the
# worker pool"): agent jobs wait on the LLM provider, so one process with 1,000 threads keeps 1,000 jobs
# waiting at once; threads are created as jobs arrive, so an idle worker holds few.
set -euo pipefail
cd "$(dirname "$0")/../backend"
PY="${PYTHON:-python}"
POOL="${WORKER_POOL:-threads}"
CONCURRENCY="${WORKER_CONCURRENCY:-1000}"
# One connection to the LLM provider per job in flight: a smaller pool would queue jobs that are ready
# to call the provider (measured: a pool of 100 capped 1,000 concurrent jobs at ~60 jobs/s).
export LLM_HTTP_POOL_SIZE="${LLM_HTTP_POOL_SIZE:-$CONCURRENCY}"
# Every job in flight holds a socket (and, on SQLite, a database file handle): lift the soft limit on
# open files to the hard one.
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
exec "$PY" -m celery -A config.celery_app worker \
  --pool "$POOL" \
  --concurrency "$CONCURRENCY" \
  --queues "${WORKER_QUEUES:-agent,batch,webhooks}" \
  --hostname "${WORKER_NAME:-worker}@%h" \
  --loglevel "${LOG_LEVEL:-INFO}" \
  ${WORKER_BEAT:+--beat --schedule "${VAR_DIR:-../var}/celerybeat-schedule"} \
  "$@"
