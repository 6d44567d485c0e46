"""Django settings, read from the environment through `core.env` (one parser for the whole project).

Every variable is listed, grouped and commented in `.env.example` at the repository root. A bad value
fails at start-up with a message that names the variable.

Longer than ~400 lines on purpose: it is the one list of every setting, grouped as `.env.example` is,
with the cross-checks between them (timeouts against Celery's limits, RabbitMQ's consumer timeout).
"""

from __future__ import annotations

import os
from pathlib import Path

import environ

from agent.budget import BudgetSettings, check_budget_prices
from agent.config import LLMSettings
from agent.vector_config import VectorSettings
from config import broker
from core.env import Env, env_error

BACKEND_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BACKEND_DIR.parent

# Every variable is read through core.env (typed, loud on a bad value); django-environ only reads the
# developer's `.env` and parses DATABASE_URL.
env = Env()
# A developer's `.env` at the repository root; real environment variables win over it.
if (REPO_DIR / ".env").is_file():
    environ.Env.read_env(REPO_DIR / ".env", overwrite=False)


# --- Django -------------------------------------------------------------------------------------
SECRET_KEY = env.str("SECRET_KEY", "dev-insecure-change-me-librarian")
DEBUG = env.bool("DEBUG", False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "apps.libros",
    "apps.agent",
    "apps.webhooks",
    "apps.console",
]

MIDDLEWARE = [
    # Outermost: whatever Django answers by itself under /api/ (no route, a crash, DEBUG's pages) becomes
    # the API's one error shape.
    "apps.core.http_errors.ApiErrorShapeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (admin, Swagger UI, ReDoc) served by the API process itself, compressed and with
    # content-hashed names cached for a year (WhiteNoise; `collectstatic` fills STATIC_ROOT). Sync and async.
    "apps.core.static_files.StaticFilesMiddleware",
    # Oversized bodies get 413 in the API's error shape before anything reads them.
    "apps.core.http_errors.RequestSizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # Django's, without redirecting a POST under /api/ that lacks its trailing slash (its docstring).
    "apps.core.http_errors.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: a job GET that does not wait skips the async live view under a sync handler (its docstring).
    "apps.agent.apis.live.PlainUnlessOpenMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# --- Database -----------------------------------------------------------------------------------
VAR_DIR = Path(env.str("VAR_DIR", str(REPO_DIR / "var")))
if not VAR_DIR.is_absolute():
    VAR_DIR = REPO_DIR / VAR_DIR
VAR_DIR.mkdir(parents=True, exist_ok=True)
DATABASES = {"default": environ.Env().db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Django's backend with one writer per process at a time, queued on a lock (config/sqlite3/base.py).
    DATABASES["default"]["ENGINE"] = "config.sqlite3"
    # A file, not memory, so that end-to-end tests can share the test database with a worker process.
    # One file per test run (pid), so that concurrent runs never share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test_db_{os.getpid()}.sqlite3")}
    # WAL lets the API read while a worker thread writes; the timeout waits out short write locks.
    # synchronous=NORMAL is SQLite's advice for WAL: a commit no longer waits for an fsync (only the
    # checkpoints do), so a power cut may lose the last commits but never corrupts the file; a crashed
    # process loses nothing. It cut the time writers hold the lock (docs/benchmarks.md).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Persistent connections: opening one per request or task was a measurable share of each job.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", 60, minimum=0)
elif (DB_POOL_MAX_SIZE := env.int("DB_POOL_MAX_SIZE", 10, minimum=0)) > 0:
    # PostgreSQL: a connection pool per process (psycopg_pool). A worker runs hundreds of jobs at once
    # and each thread would otherwise keep a connection of its own (PostgreSQL allows 100 by default);
    # with the pool, a job hands its connection back while it waits on the LLM (apps.agent.services.jobs).
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps the connections; Django must not
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DB_POOL_MAX_SIZE,
        "timeout": env.float("DB_POOL_TIMEOUT_SEC", 5.0, minimum=0.1),
    }
    # Django then makes the pool check each connection as it leaves it: after a server restart or a
    # terminated backend, the pool would otherwise hand out dead connections one failed query at a time.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
else:
    # DB_POOL_MAX_SIZE=0: persistent connections, one per thread, checked before reuse.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", 60, minimum=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if "TEST" not in DATABASES["default"]:
    # One test database per test run (pid), so that concurrent runs on one server never share it.
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, cache -------------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        # Shared across processes: throttling counters and BYO-key hand-off need one view.
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": env.str("CACHE_URL", REDIS_URL),
        "TIMEOUT": 300,
        # A hung Redis must cost a request seconds, not minutes: the throttle then fails open and the
        # BYO-key hand-off answers 503 (redis-py has no socket timeouts by default).
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
    }
}

# --- Celery -------------------------------------------------------------------------------------
# Redis (redis://, the default) or RabbitMQ (amqp://); what differs between them is in config/broker.py.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", REDIS_URL)
try:
    BROKER_KIND = broker.broker_kind(CELERY_BROKER_URL)
except ValueError:  # the URL may hold a password: name its scheme only
    raise env_error(
        "CELERY_BROKER_URL", CELERY_BROKER_URL.split(":")[0] + "://...", "a redis:// or amqp:// URL"
    ) from None
# The job row is the truth; the result backend only serves bare round trips (benchmarks, inspect). It is
# Redis (REDIS_URL) whatever the broker: Celery has no result backend that speaks AMQP.
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_RESULT_EXPIRES = 3600
# One result backend (one Redis connection pool) for the whole worker instead of one per thread: Celery
# builds a backend in each new thread otherwise (~1 ms each, and a worker runs up to 1,000 threads). The
# app only stores results through it; nothing here waits on a result (`AsyncResult.get`'s pub/sub is the
# part that is not thread-safe).
CELERY_RESULT_BACKEND_THREAD_SAFE = True
# Celery's Django fixup closes every database connection before and after each task unless this is set,
# so each job would open its connection again (SQLite: open the file, register functions, PRAGMAs). Set
# to "never": config/celery_app.py applies Django's own rule at task boundaries instead, as Django does
# per request (close_old_connections: CONN_MAX_AGE, broken connections; with the PostgreSQL pool
# CONN_MAX_AGE is 0, so the connection goes back to the pool after each task).
CELERY_DB_REUSE_MAX = 2**62
# JSON only: task arguments are ids, and pickle would let a broker write execute code.
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Ack after the task ran, and re-queue if the worker process dies, so that a killed worker loses
# nothing; the job claim (conditional update) makes the second delivery harmless.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message reserved per pool slot: a slow job never hides queued ones from idle workers.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# After a broker reconnect, Celery lowers the prefetch count by the tasks still running and raises it
# again as tasks are acknowledged. With the threads pool that raise runs in the pool thread that finishes
# the task: a synchronous `basic.qos` on the consumer's AMQP connection while the worker's main thread
# reads the same socket (py-amqp is not thread-safe). Each thread can take the other's reply, and both
# then wait on the socket for ever: the worker stays connected and consumes nothing again, not even the
# sweep (docs/reliability.md, "RabbitMQ restarted during processing"). Off, the new consumer starts at
# the full prefetch count and only the event loop's thread talks to the broker; the cost is that, right
# after a reconnect, the worker may reserve up to WORKER_CONCURRENCY messages more than it has free
# slots until the running tasks end (they wait unacked, re-queued if the worker dies).
CELERY_WORKER_ENABLE_PREFETCH_COUNT_REDUCTION = False
CELERY_TASK_TRACK_STARTED = True
# Task events (received, started, succeeded...) are what Flower shows live. Off by default: Flower
# switches them on in every worker it sees (an `enable_events` broadcast every 5 s), so they are paid for
# only while someone watches; they cost ~3 ms of worker CPU per job (docs/benchmarks.md). `true` sends
# them from the start (for an event consumer other than Flower).
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("CELERY_WORKER_SEND_TASK_EVENTS", False)
# No "task-sent" event from the API: it was one more Redis publish per submitted job, and Flower shows a
# task from its "received" event on anyway (docs/benchmarks.md).
CELERY_TASK_SEND_SENT_EVENT = False
CELERY_TASK_DEFAULT_QUEUE = "agent"
# RabbitMQ: durable classic queues declared with x-max-priority (None on Redis: kombu's defaults).
CELERY_TASK_QUEUES = broker.task_queues(BROKER_KIND)
# Batch jobs rank AGENT_BATCH_PRIORITY (9) on a scale where 0 is served first and interactive jobs rank 0,
# so a worker that consumes both always takes an interactive job before a batch job (docs/operations.md,
# "Batches and priorities"; tests/e2e/test_batches_e2e.py on both brokers). RabbitMQ orders only inside
# one queue, so there batch jobs share the `agent` queue by default (AGENT_BATCH_QUEUE).
AGENT_BATCH_PRIORITY = env.int("AGENT_BATCH_PRIORITY", 9, minimum=0)
if AGENT_BATCH_PRIORITY > broker.MAX_PRIORITY:
    raise env_error("AGENT_BATCH_PRIORITY", AGENT_BATCH_PRIORITY, "an integer from 0 to 9")
AGENT_BATCH_QUEUE = env.str("AGENT_BATCH_QUEUE") or ("agent" if BROKER_KIND == broker.RABBITMQ else "batch")
if AGENT_BATCH_QUEUE not in broker.QUEUE_NAMES[:2]:
    raise env_error("AGENT_BATCH_QUEUE", AGENT_BATCH_QUEUE, "agent or batch")
# Every route names its priority: RabbitMQ treats a message without one as the lowest, below batch jobs.
# (Not task_default_priority: it becomes each task's own priority, which overrides its route's.)
CELERY_TASK_ROUTES = broker.task_routes(
    BROKER_KIND, batch_queue=AGENT_BATCH_QUEUE, batch_rank=AGENT_BATCH_PRIORITY
)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", 3.0, minimum=0.1)
CELERY_BROKER_TRANSPORT_OPTIONS = broker.transport_options(
    BROKER_KIND, visibility_timeout=env.int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=1)
)
# RabbitMQ closes the channel of a delivery left unacked longer than its `consumer_timeout` (rabbitmq.conf,
# 1800 s by default); state the server's value here so that start-up checks the settings against it.
RABBITMQ_CONSUMER_TIMEOUT_SEC = env.float("RABBITMQ_CONSUMER_TIMEOUT_SEC", 1800.0, minimum=1.0)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", 300, minimum=1)
CELERY_TASK_SOFT_TIME_LIMIT = max(1, CELERY_TASK_TIME_LIMIT - 10)
_visibility_timeout = CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout")
if _visibility_timeout is not None and _visibility_timeout <= CELERY_TASK_TIME_LIMIT:
    raise env_error(
        "CELERY_VISIBILITY_TIMEOUT",
        _visibility_timeout,
        f"more seconds than CELERY_TASK_TIME_LIMIT ({CELERY_TASK_TIME_LIMIT})",
    )
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", False)
# How often a worker process hands the GIL between its threads (config/celery_app.py: tune_interpreter).
WORKER_SWITCH_INTERVAL_MS = env.float("WORKER_SWITCH_INTERVAL_MS", 1.0, minimum=0.05)

# --- Agent --------------------------------------------------------------------------------------
LLM = LLMSettings.from_env(os.environ)
# Spending caps in USD per user and for the whole deployment, per day and month (docs/costs.md).
BUDGETS = BudgetSettings.from_env(os.environ)
check_budget_prices(BUDGETS, LLM)
VECTOR = VectorSettings.from_env(os.environ, repo_dir=REPO_DIR)
AGENT_JOB_TIMEOUT_SEC = env.float("AGENT_JOB_TIMEOUT_SEC", 60.0, minimum=0.1)
AGENT_MAX_ATTEMPTS = env.int("AGENT_MAX_ATTEMPTS", 3, minimum=1)
AGENT_QUERY_MAX_CHARS = 4000
AGENT_TOP_K_DEFAULT = env.int("AGENT_TOP_K_DEFAULT", 5, minimum=1)
AGENT_SWEEP_INTERVAL_SEC = env.float("AGENT_SWEEP_INTERVAL_SEC", 30.0, minimum=1.0)
# A queued job not picked up within this many seconds is enqueued again by the sweep.
AGENT_QUEUED_STALE_SEC = env.float("AGENT_QUEUED_STALE_SEC", 60.0, minimum=1.0)
# Batches (POST /api/agent/batches, `rerun_jobs`): the most jobs one batch may create.
AGENT_BATCH_MAX_SIZE = env.int("AGENT_BATCH_MAX_SIZE", 500, minimum=1)
# A queued batch job waits its turn behind the rest of its batch at low priority: the sweep re-publishes
# it only after this long (interactive jobs: AGENT_QUEUED_STALE_SEC), so a long batch is not duplicated.
AGENT_BATCH_QUEUED_STALE_SEC = env.float("AGENT_BATCH_QUEUED_STALE_SEC", 900.0, minimum=1.0)
# Fair share (apps/agent/services/fairness.py): at most this many jobs of one user run (or wait published
# in the Celery queue) at once across every worker; the rest wait unpublished, in order. Batch jobs count
# apart, with their own cap. Empty: unlimited.
AGENT_MAX_RUNNING_PER_USER = env.optional_int("AGENT_MAX_RUNNING_PER_USER", minimum=1)
AGENT_MAX_RUNNING_PER_USER_BATCH = env.optional_int("AGENT_MAX_RUNNING_PER_USER_BATCH", minimum=1)
if AGENT_JOB_TIMEOUT_SEC >= CELERY_TASK_TIME_LIMIT:
    raise env_error(
        "AGENT_JOB_TIMEOUT_SEC",
        AGENT_JOB_TIMEOUT_SEC,
        f"fewer seconds than CELERY_TASK_TIME_LIMIT ({CELERY_TASK_TIME_LIMIT})",
    )
CELERY_BEAT_SCHEDULE = {
    "agent-sweep": {"task": "agent.jobs_sweep", "schedule": AGENT_SWEEP_INTERVAL_SEC},
}
# Retention (docs/operations.md, "Retention"): finished jobs older than this many days are purged with
# their trace steps, events and webhook deliveries. Empty keeps them for ever (and schedules no purge).
AGENT_JOB_RETENTION_DAYS = (
    env.float("AGENT_JOB_RETENTION_DAYS", 0.0) if env.raw("AGENT_JOB_RETENTION_DAYS") else None
)
if AGENT_JOB_RETENTION_DAYS is not None and not AGENT_JOB_RETENTION_DAYS > 0:
    raise env_error(
        "AGENT_JOB_RETENTION_DAYS", AGENT_JOB_RETENTION_DAYS, "a number of days > 0 (empty: keep for ever)"
    )
# Jobs deleted per transaction, with their rows: ~70 ms per 50 jobs on a busy SQLite (docs/operations.md).
AGENT_PURGE_CHUNK_SIZE = env.int("AGENT_PURGE_CHUNK_SIZE", 100, minimum=1)
AGENT_PURGE_INTERVAL_SEC = env.float("AGENT_PURGE_INTERVAL_SEC", 3600.0, minimum=1.0)
if AGENT_JOB_RETENTION_DAYS is not None:
    CELERY_BEAT_SCHEDULE["agent-purge"] = {"task": "agent.jobs_purge", "schedule": AGENT_PURGE_INTERVAL_SEC}
HEALTH_WORKER_TIMEOUT_SEC = env.float("HEALTH_WORKER_TIMEOUT_SEC", 1.0, minimum=0.1)

# --- REST framework -----------------------------------------------------------------------------
# Seconds an API process remembers a token it has checked (apps/agent/authentication.py); 0: never.
API_TOKEN_CACHE_SEC = env.float("API_TOKEN_CACHE_SEC", 5.0, minimum=0.0)
# Seconds an API process remembers the answer of a finished job's GET (apps/agent/apis/jobs.py); 0: never.
API_JOB_CACHE_SEC = env.float("API_JOB_CACHE_SEC", 30.0, minimum=0.0)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.agent.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON only: every input is a JSON object; form and multipart parsers would only add surface.
    "DEFAULT_PARSER_CLASSES": ["apps.agent.parsers.JSONParser"],
    # JSON only, too: DRF's browsable API answered `Accept: text/html` with pages (and its errors with a
    # generic shape once ApiErrorShapeMiddleware replaced them); the API's docs are /api/docs/.
    "DEFAULT_RENDERER_CLASSES": ["apps.core.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 20,
    "EXCEPTION_HANDLER": "apps.core.http_errors.exception_handler",
    "DEFAULT_THROTTLE_RATES": {
        "job_create": env.str("THROTTLE_JOB_CREATE", "120/min"),
        "batch_create": env.str("THROTTLE_BATCH_CREATE", "10/min"),
    },
    # Throttle by authenticated user; never trust X-Forwarded-For for identity.
    "NUM_PROXIES": 0,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Librarian API",
    "DESCRIPTION": "Asynchronous LLM agent jobs over a book catalogue.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # No request leaves the host from the docs pages: Swagger UI's online validator badge is off.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "COMPONENT_SPLIT_REQUEST": True,
    # Several fields are called "status" with different choices: name each set explicitly.
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "apps.agent.models.JobStatus",
        "FinishedJobStatusEnum": "apps.agent.serializers.FINISHED_STATUSES",
        "BatchStatusEnum": "apps.agent.serializers.BATCH_STATUSES",
    },
}
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", 64 * 1024, minimum=1024)

# --- i18n, static -------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns at start-up about a missing one (before collectstatic)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # collectstatic writes each file under a content-hashed name with .gz beside it; WhiteNoise serves them.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- Logging ------------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", "INFO")
# Celery's two lines per task ("received", "succeeded in"): the job row and Flower hold the same facts, and
# at hundreds of jobs per second they cost ~5% of the worker's CPU. Failures are logged at ERROR whatever
# this says; INFO brings the per-task lines back.
CELERY_TASK_LOG_LEVEL = env.str("CELERY_TASK_LOG_LEVEL", "WARNING").upper()
if CELERY_TASK_LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise env_error("CELERY_TASK_LOG_LEVEL", CELERY_TASK_LOG_LEVEL, "DEBUG, INFO, WARNING, ERROR or CRITICAL")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # httpx logs request lines at INFO; quiet it so nothing about outbound calls leaks by accident (openai 3
    # uses the httpx2/httpcore2 fork, whose loggers carry those names).
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "httpcore2": {"level": "WARNING"},
        "celery.app.trace": {"level": CELERY_TASK_LOG_LEVEL},
        "celery.worker.strategy": {"level": CELERY_TASK_LOG_LEVEL},
    },
}

# --- Bring-your-own key hand-off ----------------------------------------------------------------
# How long an encrypted BYO key waits in Redis for its job; it is deleted as soon as the job ends.
BYO_KEY_TTL_SEC = env.int("BYO_KEY_TTL_SEC", 900, minimum=10)
# A running attempt whose deadline passed this long ago is presumed lost if its worker process is gone...
AGENT_RUNNING_GRACE_SEC = env.float("AGENT_RUNNING_GRACE_SEC", 15.0, minimum=0.0)
# ... but while the worker process that runs it is alive (services/worker_liveness.py), only this much later
# again: a hung attempt still ends, a slow one on a starved machine is not taken over.
AGENT_RUNNING_HUNG_SEC = env.float("AGENT_RUNNING_HUNG_SEC", 300.0, minimum=0.0)

# --- Live job events (apps/agent/services/job_events.py, docs/api.md "Waiting and streaming") ---------
# Each job's events are a Redis Stream, kept this long after its last event; afterwards the history of an
# ended job is rebuilt from its row and trace. At most AGENT_EVENTS_MAXLEN entries per job (approximate).
AGENT_EVENTS_REDIS_URL = env.str("AGENT_EVENTS_REDIS_URL", "") or REDIS_URL
AGENT_EVENTS_RETENTION_SEC = env.int("AGENT_EVENTS_RETENTION_SEC", 86400, minimum=1)
AGENT_EVENTS_MAXLEN = env.int("AGENT_EVENTS_MAXLEN", 10000, minimum=100)
# Threads per API process for sync code under the ASGI server (every sync view; config/asgi.py): as many
# requests of one process run sync code at once. Open waits and event streams hold none.
API_SYNC_THREADS = env.int("API_SYNC_THREADS", 8, minimum=1)
# A comment line (": ping") on an idle event stream this often, so that proxies keep it open.
AGENT_EVENTS_HEARTBEAT_SEC = env.float("AGENT_EVENTS_HEARTBEAT_SEC", 15.0, minimum=0.1)
# Answer text produced within this many milliseconds of the last written delta is written with the next
# one (one Redis write per burst instead of per token); 0 writes every delta at once.
AGENT_EVENTS_DELTA_FLUSH_MS = env.float("AGENT_EVENTS_DELTA_FLUSH_MS", 25.0, minimum=0.0)
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}

# --- Webhooks -----------------------------------------------------------------------------------
# Delivery of terminal job/batch events (apps.webhooks, docs/webhooks.md). Everything below is read
# by apps.webhooks only.


def _durations(name: str, default: str) -> list[float]:
    """A comma-separated list of durations: plain seconds or with a unit, e.g. "5s,5m,30m,2h"."""
    raw = env.str(name, default)
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    values: list[float] = []
    for item in (part.strip().lower() for part in raw.split(",")):
        unit = next((u for u in ("ms", "s", "m", "h") if item.endswith(u)), "")
        try:
            value = float(item[: len(item) - len(unit)] if unit else item) * units.get(unit, 1.0)
        except ValueError:
            raise env_error(name, raw, 'comma-separated durations such as "5s,5m,30m,2h"') from None
        if value < 0:
            raise env_error(name, raw, "non-negative durations")
        values.append(value)
    return values


# Connect and read timeouts of one attempt, and a hard cap on its whole HTTP exchange (read timeouts
# apply per read: a receiver dripping bytes must not hold a worker for long).
WEBHOOK_CONNECT_TIMEOUT_SEC = env.float("WEBHOOK_CONNECT_TIMEOUT_SEC", 3.0, minimum=0.01)
WEBHOOK_READ_TIMEOUT_SEC = env.float("WEBHOOK_READ_TIMEOUT_SEC", 5.0, minimum=0.01)
WEBHOOK_ATTEMPT_DEADLINE_SEC = env.float("WEBHOOK_ATTEMPT_DEADLINE_SEC", 15.0, minimum=0.01)
# Delays before the 2nd, 3rd, ... attempt (the Standard Webhooks schedule); attempts = len + 1.
WEBHOOK_RETRY_SCHEDULE = _durations("WEBHOOK_RETRY_SCHEDULE", "5s,5m,30m,2h,5h,10h,10h")
# Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter] so retries do not align.
WEBHOOK_RETRY_JITTER = env.float("WEBHOOK_RETRY_JITTER", 0.2, minimum=0.0)
# Waits up to this long are scheduled as task countdowns; longer ones are sent by the sweep (Redis
# re-delivers a message held past its visibility timeout, so long countdowns would duplicate).
WEBHOOK_COUNTDOWN_MAX_SEC = env.float("WEBHOOK_COUNTDOWN_MAX_SEC", 900.0, minimum=0.0)
if _visibility_timeout is not None and _visibility_timeout <= WEBHOOK_COUNTDOWN_MAX_SEC:
    raise env_error(
        "WEBHOOK_COUNTDOWN_MAX_SEC",
        WEBHOOK_COUNTDOWN_MAX_SEC,
        f"fewer seconds than CELERY_VISIBILITY_TIMEOUT ({_visibility_timeout})",
    )
if BROKER_KIND == broker.RABBITMQ and (
    _problem := broker.unacked_limit_problem(
        consumer_timeout=RABBITMQ_CONSUMER_TIMEOUT_SEC,
        task_time_limit=CELERY_TASK_TIME_LIMIT,
        countdown_max=WEBHOOK_COUNTDOWN_MAX_SEC,
    )
):
    raise env_error("RABBITMQ_CONSUMER_TIMEOUT_SEC", RABBITMQ_CONSUMER_TIMEOUT_SEC, _problem)
# A receiver's Retry-After (on 429/503) is honoured up to this many seconds.
WEBHOOK_RETRY_AFTER_MAX_SEC = env.float("WEBHOOK_RETRY_AFTER_MAX_SEC", 3600.0, minimum=0.0)
# Bytes of a response body read at most, and characters of it kept on the attempt row.
WEBHOOK_RESPONSE_MAX_BYTES = env.int("WEBHOOK_RESPONSE_MAX_BYTES", 4096, minimum=0)
WEBHOOK_RESPONSE_EXCERPT_CHARS = env.int("WEBHOOK_RESPONSE_EXCERPT_CHARS", 256, minimum=0)
# After a rotation the previous secret still signs (a second signature) for this many seconds.
WEBHOOK_SECRET_GRACE_SEC = env.float("WEBHOOK_SECRET_GRACE_SEC", 86400.0, minimum=0.0)
# Key that encrypts stored webhook secrets at rest; defaults to one derived from SECRET_KEY.
WEBHOOK_SECRETS_ENCRYPTION_KEY = env.str("WEBHOOK_SECRETS_ENCRYPTION_KEY", "")
# Hosts (names or IPs, exact match) that may resolve to loopback/private addresses. Empty in production.
WEBHOOK_ALLOWED_HOSTS = env.list("WEBHOOK_ALLOWED_HOSTS", [])
WEBHOOK_USER_AGENT = env.str("WEBHOOK_USER_AGENT", "Librarian-Webhooks/0.1")
# Pending deliveries whose attempt is this overdue (a lost message, a broker outage) are re-enqueued.
WEBHOOK_SWEEP_INTERVAL_SEC = env.float("WEBHOOK_SWEEP_INTERVAL_SEC", 60.0, minimum=1.0)
WEBHOOK_SWEEP_OVERDUE_SEC = env.float("WEBHOOK_SWEEP_OVERDUE_SEC", 120.0, minimum=1.0)
if WEBHOOK_ATTEMPT_DEADLINE_SEC >= CELERY_TASK_SOFT_TIME_LIMIT:
    raise env_error(
        "WEBHOOK_ATTEMPT_DEADLINE_SEC",
        WEBHOOK_ATTEMPT_DEADLINE_SEC,
        f"fewer seconds than CELERY_TASK_SOFT_TIME_LIMIT ({CELERY_TASK_SOFT_TIME_LIMIT})",
    )
CELERY_BEAT_SCHEDULE["webhooks-sweep"] = {
    "task": "agent.deliveries_sweep",
    "schedule": WEBHOOK_SWEEP_INTERVAL_SEC,
}
# --- end of Webhooks ----------------------------------------------------------------------------
