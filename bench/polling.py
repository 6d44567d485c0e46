"""Polling: GET /api/agent/jobs/<id> under 50 concurrent pollers, against a trivial view in the same server.

Two jobs: a finished one (its full payload: result, 4 trace rows; an API process reads it once, then
answers from memory for API_JOB_CACHE_SEC) and a queued one (no worker runs: read from the database on
every GET, as while a job runs). The baseline is GET /api/ping (no authentication, no database) in the
same server, right after; the ASGI server (shipped) and the WSGI server it replaced are measured one
after the other. Each
poller sends its next request as soon as the previous one is answered, for a fixed duration.
"""

from __future__ import annotations

import asyncio
import time

from bench import client
from bench.report import Section, ms, ratio, table
from bench.stack import API_SERVERS, Stack, Template, log, shipped_worker

POLLERS = 50


async def _load(stack: Stack, path: str, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    async with client.session(stack.api_url, stack.token, connections=POLLERS) as http:

        async def poller(end: float) -> None:
            nonlocal errors
            while time.monotonic() < end:
                started = time.perf_counter()
                async with http.get(path) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(poller(time.monotonic() + 0.5) for _ in range(POLLERS)))  # warm-up
        latencies.clear()
        started = time.monotonic()
        await asyncio.gather(*(poller(started + seconds) for _ in range(POLLERS)))
        elapsed = time.monotonic() - started
    return {
        "rps": len(latencies) / elapsed,
        "errors": errors,
        "n": len(latencies),
        **client.summary_ms(latencies),
    }


async def _queued_job(stack: Stack) -> str:
    async with client.session(stack.api_url, stack.token, connections=2) as http:
        return (await client.post_job(http, "a whale hunt at sea"))["id"]


async def _one_job(stack: Stack) -> str:
    async with client.session(stack.api_url, stack.token, connections=2) as http:
        accepted = await client.post_job(http, "a whale hunt at sea")
        while (await client.get_job(http, accepted["id"]))["status"] not in client.TERMINAL:
            await asyncio.sleep(0.05)
        return accepted["id"]


def run(template: Template, *, smoke: bool) -> Section:
    seconds = 1.0 if smoke else 10.0
    pool, concurrency = shipped_worker()
    results: dict[str, dict[str, dict]] = {}
    with Stack(template, "polling") as stack:
        api, worker = stack.start(worker=(pool, concurrency))
        job_id = asyncio.run(_one_job(stack))
        worker.stop()  # nothing else runs while the API is measured
        queued_id = asyncio.run(_queued_job(stack))  # stays queued: no worker
        for server in API_SERVERS:
            if server != "asgi":  # the shipped server is running; the one it replaced is measured after
                api.stop()
                api = stack.start_api(server=server)
            log(f"polling ({server}): {POLLERS} pollers on a terminal job for {seconds:.0f} s ...")
            job = asyncio.run(_load(stack, f"/api/agent/jobs/{job_id}", seconds))
            log(f"polling ({server}): {POLLERS} pollers on a queued job for {seconds:.0f} s ...")
            queued = asyncio.run(_load(stack, f"/api/agent/jobs/{queued_id}", seconds))
            log(f"polling ({server}): {POLLERS} pollers on /api/ping for {seconds:.0f} s ...")
            ping = asyncio.run(_load(stack, "/api/ping", seconds))
            results[server] = {"job": job, "queued": queued, "ping": ping}

    def row(label: str, r: dict) -> list:
        return [label, f"{r['rps']:,.0f}", ms(r["p50"]), ms(r["p95"]), ms(r["p99"]), r["errors"]]

    rows = []

    def ratio_row(label: str, r: dict, ping: dict) -> list:
        return [
            label,
            f"{r['rps'] / ping['rps']:.2f}",
            ratio(r["p50"] / ping["p50"]),
            ratio(r["p95"] / ping["p95"]),
            ratio(r["p99"] / ping["p99"]),
            "",
        ]

    for server, label in (("asgi", "ASGI, shipped"), ("wsgi", "WSGI, before")):
        job, queued, ping = results[server]["job"], results[server]["queued"], results[server]["ping"]
        rows += [
            row(f"{label}: GET /api/agent/jobs/<id>, finished job (token auth; remembered)", job),
            row(f"{label}: GET /api/agent/jobs/<id>, queued job (token auth, job row)", queued),
            row(f"{label}: **baseline** GET /api/ping (no auth, no I/O)", ping),
            ratio_row(f"{label}: ratio finished job / ping", job, ping),
            ratio_row(f"{label}: ratio queued job / ping", queued, ping),
        ]
    body = "\n".join(
        [
            table(["endpoint", "requests/s", "p50 (ms)", "p95 (ms)", "p99 (ms)", "errors"], rows),
            "",
            f"{POLLERS} concurrent pollers (one aiohttp client process on the same machine, keep-alive), "
            f"{seconds:.0f} s each; API: gunicorn with 2 processes, uvicorn workers (ASGI, shipped) and, "
            "after it, 2 processes × 8 threads (WSGI, before); the worker is stopped.",
        ]
    )
    return Section(
        "polling",
        f"Polling: {POLLERS} concurrent pollers against a trivial view",
        body,
        {server: results[server] for server in results},
    )
