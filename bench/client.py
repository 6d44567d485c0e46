"""HTTP and Celery clients of the benchmarks, and the numbers they report."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiohttp
import numpy as np

from bench.stack import QUERIES

TERMINAL = {"succeeded", "failed", "cancelled"}


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds of durations given in seconds."""
    ms = [v * 1000 for v in values_s]
    return {"p50": pct(ms, 50), "p95": pct(ms, 95), "p99": pct(ms, 99), "mean": float(np.mean(ms))}


def timestamp(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def session(api_url: str, token: str | None, connections: int = 100) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Token {token}"} if token else {}
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    return aiohttp.ClientSession(
        base_url=api_url,
        headers=headers,
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=60),
    )


# gunicorn closes idle keep-alive connections after 2 s; a request sent on one just as it closes fails
# before the server read it. Such requests are sent again (POSTs carry an Idempotency-Key, so a repeat
# can never create a second job).
RETRIED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


async def post_job(http: aiohttp.ClientSession, query: str, top_k: int = 5) -> dict[str, Any]:
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    for attempt in range(3):
        try:
            async with http.post(
                "/api/agent/jobs", json={"query": query, "top_k": top_k}, headers=headers
            ) as response:
                body = await response.json()
                if response.status != 202:
                    raise RuntimeError(f"POST /api/agent/jobs answered {response.status}: {body}")
                return body
        except RETRIED:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def get_json(http: aiohttp.ClientSession, path: str, **params: str) -> dict[str, Any]:
    for attempt in range(3):
        try:
            async with http.get(path, params=params or None) as response:
                return await response.json()
        except RETRIED:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def get_job(http: aiohttp.ClientSession, job_id: str) -> dict[str, Any]:
    return await get_json(http, f"/api/agent/jobs/{job_id}")


async def submit(
    http: aiohttp.ClientSession, n: int, *, in_flight: int = 16, offset: int = 0
) -> tuple[list[str], float, float]:
    """POST `n` jobs as fast as the API takes them (`in_flight` at a time).

    Returns (ids, wall time of the first request, wall time of the last answer).
    """
    ids: list[str] = [""] * n
    counter = iter(range(n))
    started = time.time()

    async def sender() -> None:
        for i in counter:
            body = await post_job(http, QUERIES[(offset + i) % len(QUERIES)])
            ids[i] = body["id"]

    await asyncio.gather(*(sender() for _ in range(min(in_flight, n))))
    return ids, started, time.time()


async def count(http: aiohttp.ClientSession, status: str) -> int:
    return int((await get_json(http, "/api/agent/jobs", status=status, limit="1"))["count"])


async def wait_all_terminal(http: aiohttp.ClientSession, timeout: float, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while True:
        pending = await count(http, "queued") + await count(http, "running")
        if pending == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pending} jobs still pending after {timeout:.0f} s")
        await asyncio.sleep(interval)


async def list_jobs(http: aiohttp.ClientSession) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = await get_json(http, "/api/agent/jobs", limit="100", offset=str(offset))  # largest page
        rows += page["results"]
        if not page.get("next") or not page["results"]:
            return rows
        offset += len(page["results"])


async def finished(http: aiohttp.ClientSession, ids: Sequence[str]) -> tuple[float, dict[str, int]]:
    """(latest finished_at as a wall-clock time, statuses counted) over the jobs `ids`."""
    wanted = set(ids)
    rows = [row for row in await list_jobs(http) if row["id"] in wanted]
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    last = max(timestamp(row["finished_at"]) or 0.0 for row in rows)
    return last, statuses


def bare_round_trips(n: int, timeout: float = 30.0) -> list[float]:
    """`apply_async` of `agent.noop` then `AsyncResult.get`, one after the other; durations in seconds."""
    from bench.stack import celery_app

    app = celery_app()
    durations = []
    for _ in range(n):
        started = time.perf_counter()
        app.send_task("agent.noop", queue="agent").get(timeout=timeout)
        durations.append(time.perf_counter() - started)
    return durations


def bare_throughput(n: int, timeout: float = 120.0) -> tuple[float, float]:
    """Send `n` no-op tasks as fast as possible and wait for every result. Returns (first send, last result)."""
    from bench.stack import celery_app

    app = celery_app()
    started = time.time()
    results = [app.send_task("agent.noop", queue="agent") for _ in range(n)]
    deadline = time.monotonic() + timeout
    for result in results:
        result.get(timeout=max(0.1, deadline - time.monotonic()))
    return started, time.time()


def _group_members(pgid: int) -> list[tuple[str, list[str]]]:
    """(pid, fields of /proc/<pid>/stat after the command name) of the live processes of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            members.append((entry, fields))
    return members


def group_memory(pgid: int) -> dict[str, float]:
    """RSS and PSS (MiB) summed over the processes of a process group, and the largest RSS."""
    rss = pss = largest = 0.0
    processes = 0
    for pid, _ in _group_members(pgid):
        values = {}
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    name, _, rest = line.partition(":")
                    if name in ("Rss", "Pss"):
                        values[name] = int(rest.split()[0]) / 1024
        except (OSError, IndexError, ValueError):
            continue
        processes += 1
        rss += values.get("Rss", 0.0)
        pss += values.get("Pss", 0.0)
        largest = max(largest, values.get("Rss", 0.0))
    return {"rss": rss, "pss": pss, "largest_rss": largest, "processes": processes}


def cpu_seconds(pgid: int) -> float:
    """User + system CPU time (s) used so far by the live processes of a process group."""
    # utime, stime: fields 14 and 15 of stat
    total = sum(int(fields[11]) + int(fields[12]) for _, fields in _group_members(pgid))
    return total / os.sysconf("SC_CLK_TCK")


def group_threads(pgid: int) -> int:
    """Threads of the live processes of a process group, summed."""
    return sum(threads_of(pid) for pid, _ in _group_members(pgid))


def threads_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
