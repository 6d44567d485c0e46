"""Throughput: sustained jobs per second with the stub LLM, against bare Celery no-ops on the same worker.

Everything runs on this machine: the API (gunicorn), one worker process (the shipped pool), Redis, the
database, and the client. Jobs: N POSTs as fast as the API takes them; the rate is N over the time from
the first POST to the last `finished_at`. Baseline, in the same run and worker: N `agent.noop` tasks sent
as fast as one client sends them, then every result collected.
"""

from __future__ import annotations

import asyncio

from bench import client
from bench.report import Section, table
from bench.stack import QUERIES, Stack, Template, log, shipped_worker

IN_FLIGHT = 16


async def _jobs(stack: Stack, n: int) -> dict[str, float]:
    async with client.session(stack.api_url, stack.token, connections=IN_FLIGHT + 4) as http:
        await client.submit(http, len(QUERIES), in_flight=IN_FLIGHT)
        await client.wait_all_terminal(http, timeout=120)
        cpu_before = stack.cpu()
        ids, first, last_post = await client.submit(http, n, in_flight=IN_FLIGHT)
        await client.wait_all_terminal(http, timeout=600)
        cpu = {name: used - cpu_before.get(name, 0.0) for name, used in stack.cpu().items()}
        last_finish, statuses = await client.finished(http, ids)
    return {
        "elapsed": last_finish - first,
        "submit": last_post - first,
        "statuses": statuses,
        "cpu_ms_per_job": {name: used * 1000 / n for name, used in cpu.items()},
    }


def run(template: Template, *, smoke: bool) -> Section:
    n = 60 if smoke else 2000
    pool, concurrency = shipped_worker()
    with Stack(template, "throughput") as stack:
        stack.start(worker=(pool, concurrency))
        log(f"throughput: {n} bare no-op tasks ...")
        client.bare_throughput(min(n, 100))
        bare_first, bare_last = client.bare_throughput(n)
        log(f"throughput: {n} jobs ...")
        jobs = asyncio.run(_jobs(stack, n))
    bare_rate = n / (bare_last - bare_first)
    job_rate = n / jobs["elapsed"]
    submit_rate = n / jobs["submit"]
    rows = [
        [
            "jobs (POST through the API, stub LLM, result + trace stored)",
            n,
            f"{jobs['elapsed']:.2f}",
            f"{job_rate:,.1f}",
        ],
        ["of which the API accepted POSTs at", n, f"{jobs['submit']:.2f}", f"{submit_rate:,.1f}"],
        [
            "**baseline**: bare Celery `agent.noop` (send all, then get all)",
            n,
            f"{bare_last - bare_first:.2f}",
            f"{bare_rate:,.1f}",
        ],
        ["ratio jobs / bare", "", "", f"{job_rate / bare_rate:.2f} (target ≥ 0.33)"],
    ]
    body = "\n".join(
        [
            table(["path", "n", "elapsed (s)", "per second"], rows),
            "",
            f"Worker: `{pool}` pool, concurrency {concurrency} (shipped); API: gunicorn 2×8 threads; "
            f"{IN_FLIGHT} POSTs in flight; queries cycling through {len(QUERIES)} questions. "
            f"Job outcomes: {jobs['statuses']}.",
        ]
    )
    figures = {
        "n": n,
        "jobs_per_s": job_rate,
        "bare_per_s": bare_rate,
        "submit_per_s": submit_rate,
        "cpu_ms_per_job": jobs["cpu_ms_per_job"],
    }
    return Section("throughput", "Throughput: jobs per second against bare Celery", body, figures)
