"""Overhead: what a job costs us on top of a bare Celery round trip.

One job at a time with the stub LLM: POST /api/agent/jobs, then GET its poll URL every `POLL_SEC` until
it is terminal; the latency is from the POST to the answer that shows the terminal state. The server's
own view (created_at → finished_at, no polling in it) is shown too. The baseline, in the same run on the
same Redis and worker: `send_task("agent.noop")` + `AsyncResult.get()` (the result arrives by pub/sub).
"""

from __future__ import annotations

import asyncio
import time

from bench import client
from bench.report import Section, ms, ratio, table
from bench.stack import QUERIES, Stack, Template, log, shipped_worker

POLL_SEC = 0.002
WARM_UP = len(QUERIES)


async def _jobs(stack: Stack, n: int) -> tuple[list[float], list[float], dict[str, int]]:
    seen, server, statuses = [], [], {}
    async with client.session(stack.api_url, stack.token, connections=2) as http:
        for i in range(WARM_UP + n):
            started = time.perf_counter()
            accepted = await client.post_job(http, QUERIES[i % len(QUERIES)])
            while True:
                job = await client.get_job(http, accepted["id"])
                if job["status"] in client.TERMINAL:
                    break
                await asyncio.sleep(POLL_SEC)
            if i < WARM_UP:
                continue
            seen.append(time.perf_counter() - started)
            timings = job["timings"]
            server.append(client.timestamp(timings["finished_at"]) - client.timestamp(timings["created_at"]))
            statuses[job["status"]] = statuses.get(job["status"], 0) + 1
    return seen, server, statuses


def run(template: Template, *, smoke: bool) -> Section:
    n = 30 if smoke else 1000
    pool, concurrency = shipped_worker()
    with Stack(template, "overhead") as stack:
        stack.start(worker=(pool, concurrency))
        log(f"overhead: {n} jobs one at a time ...")
        seen, server, statuses = asyncio.run(_jobs(stack, n))
        log(f"overhead: {n} bare Celery round trips ...")
        client.bare_round_trips(WARM_UP)
        bare = client.bare_round_trips(n)
    job_s, server_s, bare_s = client.summary_ms(seen), client.summary_ms(server), client.summary_ms(bare)
    rows = [
        [f"job, POST → terminal seen by polling every {POLL_SEC * 1000:.0f} ms", n]
        + [ms(job_s[k]) for k in ("p50", "p95", "p99", "mean")],
        ["job, created_at → finished_at (server clock, no polling)", n]
        + [ms(server_s[k]) for k in ("p50", "p95", "p99", "mean")],
        ["**baseline**: bare Celery `apply_async(agent.noop)` + `AsyncResult.get()`", n]
        + [ms(bare_s[k]) for k in ("p50", "p95", "p99", "mean")],
        ["ratio job (polled) / bare", ""]
        + [ratio(job_s[k] / bare_s[k]) for k in ("p50", "p95", "p99", "mean")],
        ["ratio job (server) / bare", ""]
        + [ratio(server_s[k] / bare_s[k]) for k in ("p50", "p95", "p99", "mean")],
    ]
    body = "\n".join(
        [
            table(["path", "n", "p50 (ms)", "p95 (ms)", "p99 (ms)", "mean (ms)"], rows),
            "",
            f"Worker: `{pool}` pool, concurrency {concurrency} (shipped); API: gunicorn 2×8 threads; stub LLM; "
            f"jobs one at a time after {WARM_UP} warm-up jobs, queries cycling through {len(QUERIES)} "
            f"questions (their embeddings cached after the warm-up). Job outcomes: {statuses}.",
        ]
    )
    figures = {"n": n, "job": job_s, "server": server_s, "bare": bare_s, "statuses": statuses}
    return Section("overhead", "Overhead: POST → terminal against a bare Celery round trip", body, figures)
