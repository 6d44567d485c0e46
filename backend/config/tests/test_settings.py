"""Settings fail at start-up on bad values, naming the variable.

Most tests run `config/settings.py` afresh in this process with an environment of their own
(`load_settings`), as a starting process would read it: a Django start in a subprocess costs ~0.7 CPU-s,
and ~30 of them were a tenth of this suite's CPU outside the e2e tests. Two tests start real processes,
so that the in-process reading stays true to a start: the defaults start, and a bad value stops a start.
"""

import os
import runpy
import subprocess
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

from core.errors import ImproperlyConfigured

BACKEND = Path(__file__).resolve().parents[2]
#: Variables of the run's own environment that a test must not inherit (the test says what it sets).
OWN = ("LLM_", "AGENT_", "CELERY_", "VECTOR_", "EMBEDDINGS_", "RABBITMQ_")


def _environment(env: dict[str, str]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(OWN)}
    return {**clean, **env, "DJANGO_SETTINGS_MODULE": "config.settings"}


def start_django(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"],
        cwd=BACKEND,
        env=_environment(env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def load_settings(**env: str) -> SimpleNamespace:
    """The settings module executed afresh with `env` (and nothing else of ours) as its environment."""
    with mock.patch.dict(os.environ, _environment(env), clear=True):
        return SimpleNamespace(**runpy.run_path(str(BACKEND / "config" / "settings.py")))


def refused(**env: str) -> str:
    """The whole report (message and chained causes) of the settings' refusal of `env`."""
    with pytest.raises(ImproperlyConfigured) as info:
        load_settings(**env)
    return "".join(traceback.format_exception(info.value))


def message(report: str) -> str:
    """The report's last line: what a failed start prints last."""
    return report.strip().splitlines()[-1]


def test_defaults_start():
    result = start_django()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"


def test_a_bad_value_stops_a_real_start_naming_the_variable():
    result = start_django(LLM_COST_MODE="free")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "LLM_COST_MODE" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LLM_COST_MODE", "free"),
        ("LLM_PROVIDER", "skynet"),
        ("LLM_TIMEOUT_SEC", "soon"),
        ("LLM_ALLOW_BYO_KEY", "perhaps"),
        ("AGENT_MAX_ATTEMPTS", "three"),
        ("AGENT_JOB_TIMEOUT_SEC", "-1"),
        ("EMBEDDINGS_PROVIDER", "magic"),
        ("CELERY_VISIBILITY_TIMEOUT", "10"),
        ("AGENT_BATCH_MAX_SIZE", "0"),
        ("AGENT_BATCH_PRIORITY", "10"),
        ("AGENT_BATCH_QUEUED_STALE_SEC", "soon"),
        ("DEBUG", "maybe"),
        ("CELERY_TASK_LOG_LEVEL", "chatty"),
        ("WORKER_SWITCH_INTERVAL_MS", "0"),
        ("API_TOKEN_CACHE_SEC", "-1"),
        ("CELERY_BROKER_URL", "kafka://127.0.0.1:9092"),
        ("AGENT_BATCH_QUEUE", "webhooks"),
        ("AGENT_JOB_RETENTION_DAYS", "0"),
        ("AGENT_JOB_RETENTION_DAYS", "a month"),
        ("AGENT_PURGE_CHUNK_SIZE", "0"),
    ],
)
def test_bad_value_fails_naming_the_variable(variable, value):
    assert variable in message(refused(**{variable: value}))


def test_job_timeout_must_fit_in_task_time_limit():
    report = refused(
        AGENT_JOB_TIMEOUT_SEC="400", CELERY_TASK_TIME_LIMIT="300", CELERY_VISIBILITY_TIMEOUT="900"
    )
    assert "AGENT_JOB_TIMEOUT_SEC" in message(report)


def test_postgres_url_switches_engine_without_code_change():
    loaded = load_settings(DATABASE_URL="postgres://u@127.0.0.1:5432/x")
    assert loaded.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


def test_per_task_celery_lines_and_http_request_lines_are_quiet_by_default(settings):
    loggers = settings.LOGGING["loggers"]
    assert loggers["celery.app.trace"]["level"] == "WARNING"  # "Task ... succeeded in ..."
    assert loggers["celery.worker.strategy"]["level"] == "WARNING"  # "Task ... received"
    # openai 3 speaks through httpx2: its request lines (URLs of outbound calls) stay out of the logs.
    assert all(loggers[name]["level"] == "WARNING" for name in ("httpx", "httpx2", "httpcore", "httpcore2"))


def test_workers_hand_the_gil_over_every_millisecond_by_default(settings):
    import sys

    from config.celery_app import tune_interpreter

    assert settings.WORKER_SWITCH_INTERVAL_MS == 1.0
    before = sys.getswitchinterval()
    try:
        tune_interpreter()
        assert sys.getswitchinterval() == pytest.approx(0.001)
        settings.WORKER_SWITCH_INTERVAL_MS = 2.5
        tune_interpreter()
        assert sys.getswitchinterval() == pytest.approx(0.0025)
    finally:
        sys.setswitchinterval(before)


def show(expression: str, **env: str) -> str:
    """`expression` evaluated against the settings read with `env` (as `s`), as its repr."""
    return repr(eval(expression, {"s": load_settings(**env)}))  # noqa: S307 - the tests' own expressions


AMQP = "amqp://guest:guest@127.0.0.1:5672//"


def test_rabbitmq_broker_keeps_results_and_cache_on_redis():
    shown = show(
        "s.BROKER_KIND, s.CELERY_RESULT_BACKEND, s.CACHES['default']['LOCATION']",
        CELERY_BROKER_URL=AMQP,
        REDIS_URL="redis://127.0.0.1:6379/5",
    )
    assert shown == "('rabbitmq', 'redis://127.0.0.1:6379/5', 'redis://127.0.0.1:6379/5')"


def test_rabbitmq_batch_jobs_share_the_agent_queue_at_the_lowest_priority():
    shown = show(
        "s.CELERY_TASK_ROUTES['agent.batch_job_run'], s.CELERY_TASK_ROUTES['agent.job_run'], "
        "[(q.name, q.queue_arguments) for q in s.CELERY_TASK_QUEUES], s.CELERY_BROKER_TRANSPORT_OPTIONS",
        CELERY_BROKER_URL=AMQP,
    )
    args = "{'x-queue-type': 'classic', 'x-max-priority': 9}"
    assert shown == (
        "({'queue': 'agent', 'priority': 0}, {'queue': 'agent', 'priority': 9}, "
        f"[('agent', {args}), ('batch', {args}), ('webhooks', {args})], {{'confirm_publish': True}})"
    )


def test_redis_batch_jobs_keep_their_queue_at_rank_9():
    shown = show(
        "s.CELERY_TASK_ROUTES['agent.batch_job_run'], s.CELERY_TASK_ROUTES['agent.job_run'], s.CELERY_TASK_QUEUES, "
        "s.CELERY_BROKER_TRANSPORT_OPTIONS['priority_steps']",
    )
    assert (
        shown == "({'queue': 'batch', 'priority': 9}, {'queue': 'agent', 'priority': 0}, None, [0, 3, 6, 9])"
    )


def test_rabbitmq_consumer_timeout_must_outlast_an_unacked_message():
    # A countdown of up to 900 s plus a task of up to 300 s: 1,200 s unacked at most.
    last = message(refused(CELERY_BROKER_URL=AMQP, RABBITMQ_CONSUMER_TIMEOUT_SEC="1200"))
    assert "RABBITMQ_CONSUMER_TIMEOUT_SEC" in last and "1200" in last
    assert (
        load_settings(CELERY_BROKER_URL=AMQP, RABBITMQ_CONSUMER_TIMEOUT_SEC="1201").BROKER_KIND == "rabbitmq"
    )
    # Redis has no consumer timeout: the value is not checked there.
    assert load_settings(RABBITMQ_CONSUMER_TIMEOUT_SEC="10").BROKER_KIND == "redis"


def test_a_bad_broker_url_never_shows_its_password():
    report = refused(CELERY_BROKER_URL="kafka://user:hunter2@127.0.0.1:9092")
    assert "hunter2" not in report
    assert "CELERY_BROKER_URL='kafka://...'" in message(report)


def test_jobs_are_kept_for_ever_and_no_purge_is_scheduled_by_default():
    assert show("s.AGENT_JOB_RETENTION_DAYS, s.CELERY_BEAT_SCHEDULE.get('agent-purge')") == "(None, None)"


def test_a_retention_schedules_the_purge_at_its_interval():
    shown = show(
        "s.AGENT_JOB_RETENTION_DAYS, s.CELERY_BEAT_SCHEDULE.get('agent-purge')",
        AGENT_JOB_RETENTION_DAYS="30",
        AGENT_PURGE_INTERVAL_SEC="600",
    )
    assert shown == "(30.0, {'task': 'agent.jobs_purge', 'schedule': 600.0})"


def test_a_reconnected_worker_never_sets_its_prefetch_count_from_a_pool_thread():
    """Celery's prefetch restoration after a reconnect is off: with the threads pool it ran `basic.qos`
    from the pool thread that acknowledged a task, racing the event loop on one AMQP socket; the worker
    then hung, connected and consuming nothing (docs/reliability.md, fault 3b)."""
    import threading
    from types import SimpleNamespace
    from unittest import mock

    from celery.worker.consumer.consumer import Consumer

    from config.celery_app import app

    assert app.conf.worker_enable_prefetch_count_reduction is False
    assert show("s.CELERY_WORKER_ENABLE_PREFETCH_COUNT_REDUCTION", CELERY_BROKER_URL=AMQP) == "False"
    # Given a consumer that reconnected while tasks ran (its maximum not restored yet), when a task
    # received since is acknowledged (Celery calls this in the acknowledging thread), then no `basic.qos`.
    qos = mock.Mock(value=1, _mutex=threading.Lock())
    consumer = SimpleNamespace(app=app, qos=qos, _maximum_prefetch_restored=False)
    Consumer._restore_prefetch_count_after_connection_restart(consumer, None)
    qos.set.assert_not_called()
