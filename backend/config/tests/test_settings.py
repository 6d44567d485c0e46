"""Settings fail at start-up on bad values, naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BACKEND = Path(__file__).resolve().parents[2]


def start_django(**env: str) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LLM_", "AGENT_", "CELERY_", "VECTOR_", "EMBEDDINGS_"))
    }
    clean.update(env)
    clean["DJANGO_SETTINGS_MODULE"] = "config.settings"
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"],
        cwd=BACKEND,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_defaults_start():
    result = start_django()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"


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
        ("AGENT_JOB_RETENTION_DAYS", "0"),
        ("AGENT_JOB_RETENTION_DAYS", "a month"),
        ("AGENT_PURGE_CHUNK_SIZE", "0"),
    ],
)
def test_bad_value_fails_naming_the_variable(variable, value):
    result = start_django(**{variable: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert variable in result.stderr.splitlines()[-1]


def test_job_timeout_must_fit_in_task_time_limit():
    result = start_django(
        AGENT_JOB_TIMEOUT_SEC="400", CELERY_TASK_TIME_LIMIT="300", CELERY_VISIBILITY_TIMEOUT="900"
    )
    assert result.returncode != 0
    assert "AGENT_JOB_TIMEOUT_SEC" in result.stderr.splitlines()[-1]


def test_postgres_url_switches_engine_without_code_change():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; print(settings.DATABASES['default']['ENGINE'])",
        ],
        cwd=BACKEND,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": "postgres://u@127.0.0.1:5432/x",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "django.db.backends.postgresql"


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


def _purge_settings(**env: str) -> list[str]:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings as s; "
            "print(s.AGENT_JOB_RETENTION_DAYS); print(s.CELERY_BEAT_SCHEDULE.get('agent-purge'))",
        ],
        cwd=BACKEND,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_jobs_are_kept_for_ever_and_no_purge_is_scheduled_by_default():
    assert _purge_settings(DJANGO_SETTINGS_MODULE="config.settings") == ["None", "None"]


def test_a_retention_schedules_the_purge_at_its_interval():
    assert _purge_settings(
        DJANGO_SETTINGS_MODULE="config.settings",
        AGENT_JOB_RETENTION_DAYS="30",
        AGENT_PURGE_INTERVAL_SEC="600",
    ) == ["30.0", "{'task': 'agent.jobs_purge', 'schedule': 600.0}"]
