#!/usr/bin/env bash
# Start a Celery worker of the one app (config.celery_app). Used by `make up`, compose and the tests.
# The pool and concurrency are what the concurrency benchmark chose (docs/benchmarks.md): agent jobs
# wait on the LLM provider, so a thread pool serves many at once from one process.
set -euo pipefail
cd "$(dirname "$0")/../backend"
PY="${PYTHON:-python}"
exec "$PY" -m celery -A config.celery_app worker \
  --pool "${WORKER_POOL:-threads}" \
  --concurrency "${WORKER_CONCURRENCY:-64}" \
  --queues "${WORKER_QUEUES:-agent,batch,webhooks}" \
  --hostname "${WORKER_NAME:-worker}@%h" \
  --loglevel "${LOG_LEVEL:-INFO}" \
  ${WORKER_BEAT:+--beat --schedule "${VAR_DIR:-../var}/celerybeat-schedule"} \
  "$@"
