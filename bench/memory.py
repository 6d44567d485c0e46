"""Memory: the worker's RSS after start (embedding model and store loaded at start-up) and after N jobs,
and the API's.

RSS of the worker process (one process with the thread and gevent pools); the API is gunicorn's master
and its workers, summed (RSS double-counts the pages they share since the fork, PSS does not).
"""

from __future__ import annotations

import asyncio

from bench import client
from bench.report import Section, table
from bench.stack import QUERIES, Stack, Template, log, shipped_worker

IN_FLIGHT = 16


async def _jobs(stack: Stack, n: int) -> dict[str, int]:
    async with client.session(stack.api_url, stack.token, connections=IN_FLIGHT + 4) as http:
        ids, _, _ = await client.submit(http, n, in_flight=IN_FLIGHT)
        await client.wait_all_terminal(http, timeout=600)
        _, statuses = await client.finished(http, ids)
    return statuses


def run(template: Template, *, smoke: bool) -> Section:
    n = 50 if smoke else 1000
    pool, concurrency = shipped_worker()
    with Stack(template, "memory") as stack:
        api, worker = stack.start(worker=(pool, concurrency))
        worker_start = client.group_memory(worker.pid)
        api_start = client.group_memory(api.pid)
        log(f"memory: {n} jobs ...")
        statuses = asyncio.run(_jobs(stack, n))
        worker_after = client.group_memory(worker.pid)
        api_after = client.group_memory(api.pid)
        threads = client.threads_of(worker.pid)
    rows = [
        [
            "worker after start (model + store loaded)",
            f"{worker_start['rss']:.0f}",
            f"{worker_start['pss']:.0f}",
            worker_start["processes"],
        ],
        [
            f"worker after {n} jobs",
            f"{worker_after['rss']:.0f}",
            f"{worker_after['pss']:.0f}",
            worker_after["processes"],
        ],
        [
            "API after start (gunicorn master + 2 workers)",
            f"{api_start['rss']:.0f}",
            f"{api_start['pss']:.0f}",
            api_start["processes"],
        ],
        [f"API after {n} jobs", f"{api_after['rss']:.0f}", f"{api_after['pss']:.0f}", api_after["processes"]],
    ]
    body = "\n".join(
        [
            table(["process", "RSS (MiB)", "PSS (MiB)", "processes"], rows),
            "",
            f"Worker: `{pool}` pool, concurrency {concurrency} (shipped; {threads} OS threads after the run); "
            f"stub LLM; {n} jobs cycling through {len(QUERIES)} questions. Job outcomes: {statuses}.",
        ]
    )
    figures = {
        "worker_start": worker_start,
        "worker_after": worker_after,
        "api_start": api_start,
        "api_after": api_after,
    }
    return Section("memory", "Memory", body, figures)
