"""`python -m bench --smoke` keeps working: it starts its own processes (API, worker, a Redis database
of the test run's own server, a database copied from a template), prints its tables with numbers, and stops what it started.

The figures of a smoke run mean nothing (tiny sizes); only that every part runs is checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

NUMBER = r"[\d,]+\.\d+x?"


def row(text: str, starts_with: str) -> list[float]:
    """The numbers of the table row that starts with `starts_with`."""
    match = re.search(rf"^\| {re.escape(starts_with)}.*$", text, re.MULTILINE)
    assert match, f"no row starting with {starts_with!r} in:\n{text}"
    return [float(n.rstrip("x").replace(",", "")) for n in re.findall(NUMBER, match.group(0))]


def test_bench_smoke_prints_each_figure_beside_its_baseline(redis_server):
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", "--smoke", "--only", "overhead,polling,streaming"],
        cwd=REPO,
        # Database 7 of this run's own redis-server: no other run can hold it.
        env={**os.environ, "BENCH_REDIS_URL": redis_server.base_url, "BENCH_REDIS_DB": "7"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        process.terminate()  # the bench stops the processes it started on SIGTERM
        out, err = process.communicate(timeout=60)
        pytest.fail(f"the smoke run did not finish in 240 s:\n{err[-4000:]}")

    assert process.returncode == 0, err[-4000:]
    assert "### Overhead" in out and "### Polling" in out and "### Streaming" in out
    job = row(out, "job, POST → terminal")
    bare = row(out, "**baseline**: bare Celery")
    ratios = row(out, "ratio job (polled) / bare")
    assert len(job) == 4 and len(bare) == 4 and len(ratios) == 4  # p50, p95, p99, mean
    assert all(value > 0 for value in job + bare + ratios)
    assert "{'succeeded': 30}" in out  # every smoke job ended well
    for server in ("ASGI, shipped", "WSGI, before"):
        polled = row(out, f"{server}: GET /api/agent/jobs/<id>")
        ping = row(out, f"{server}: **baseline** GET /api/ping")
        assert polled[0] > 0 and ping[0] > 0
    plain = row(out, "**baseline**: one plain call")
    for streamed in ("streamed, shipped", "streamed, the SDK's typed chunks"):
        cpu, wall, ratio = row(out, streamed)
        assert cpu > 0 and wall > 0 and ratio > 0 and plain[0] > 0
    assert "Machine:" in out and "Versions:" in out
