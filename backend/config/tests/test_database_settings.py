"""The database configuration each URL gets: the SQLite backend with a write lock, or a PostgreSQL pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BACKEND = Path(__file__).resolve().parents[2]


def database_settings(**env: str) -> dict:
    script = (
        "import json, django; django.setup(); from django.conf import settings; "
        "d = settings.DATABASES['default']; "
        "print(json.dumps({k: d[k] for k in ('ENGINE', 'CONN_MAX_AGE', 'OPTIONS')}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=BACKEND,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_sqlite_gets_the_locking_backend_wal_and_persistent_connections(tmp_path):
    data = database_settings(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", DB_CONN_MAX_AGE="")

    assert data["ENGINE"] == "config.sqlite3"
    assert data["CONN_MAX_AGE"] == 60
    assert data["OPTIONS"]["init_command"] == "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    assert data["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


def test_postgres_gets_a_pool_per_process_and_no_persistent_connections():
    data = database_settings(
        DATABASE_URL="postgres://u@127.0.0.1:5432/x", DB_POOL_MAX_SIZE="", DB_POOL_TIMEOUT_SEC=""
    )

    assert data["ENGINE"] == "django.db.backends.postgresql"
    assert data["CONN_MAX_AGE"] == 0
    assert data["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 10, "timeout": 5.0}


def test_postgres_without_pool_keeps_one_connection_per_thread():
    data = database_settings(
        DATABASE_URL="postgres://u@127.0.0.1:5432/x", DB_POOL_MAX_SIZE="0", DB_CONN_MAX_AGE="30"
    )

    assert "pool" not in data["OPTIONS"]
    assert data["CONN_MAX_AGE"] == 30
