"""Live jobs: waiting (`?wait=`) and streaming (`/events`) on the shipped ASGI API.

1. POST → terminal seen by a client that waits (`GET ...?wait=30`), one job at a time, against a bare
   Celery round trip in the same run (and the polled path of bench/overhead.py, every 2 ms, beside it).
2. POST → first `llm.delta` and → final `job` event seen by an SSE client (the stub LLM streams word by
   word; the client opens the stream as soon as the POST answers).
3. Many open connections: with the worker stopped, N jobs are queued and N event streams plus N waits are
   opened and held; the API's memory and CPU are read while they are held; then the worker is started and
   every stream and wait must end with its job.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from bench import client
from bench.report import Section, ms, ratio, table
from bench.stack import QUERIES, Stack, Template, log, shipped_worker

POLL_SEC = 0.002
WARM_UP = len(QUERIES)


async def sse(response: aiohttp.ClientResponse):
    """The events of an SSE response as (name, data) pairs; heartbeats are skipped."""
    name, data = "", ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and name:
            yield name, json.loads(data)
            name, data = "", ""


async def _waited(stack: Stack, n: int) -> tuple[list[float], list[float], dict[str, int]]:
    """(seconds POST → terminal with ?wait=, the same when polling every POLL_SEC, outcomes)."""
    waited, polled, statuses = [], [], {}
    async with client.session(stack.api_url, stack.token, connections=4) as http:
        for i in range(WARM_UP + 2 * n):
            poll = i >= WARM_UP + n
            started = time.perf_counter()
            accepted = await client.post_job(http, QUERIES[i % len(QUERIES)])
            while True:
                if poll:
                    job = await client.get_job(http, accepted["id"])
                else:
                    job = await client.get_json(http, f"/api/agent/jobs/{accepted['id']}", wait="30")
                if job["status"] in client.TERMINAL:
                    break
                if poll:
                    await asyncio.sleep(POLL_SEC)
            if i < WARM_UP:
                continue
            (polled if poll else waited).append(time.perf_counter() - started)
            statuses[job["status"]] = statuses.get(job["status"], 0) + 1
    return waited, polled, statuses


async def _streamed(stack: Stack, n: int) -> tuple[list[float], list[float], int]:
    """(seconds POST → first llm.delta, POST → final job event, deltas per job on average)."""
    first, final, deltas = [], [], 0
    async with client.session(stack.api_url, stack.token, connections=4) as http:
        for i in range(n):
            started = time.perf_counter()
            accepted = await client.post_job(http, QUERIES[i % len(QUERIES)])
            async with http.get(f"/api/agent/jobs/{accepted['id']}/events") as response:
                seen_first = None
                async for name, data in sse(response):
                    if name == "llm.delta":
                        deltas += 1
                        seen_first = seen_first or time.perf_counter() - started
                    if name == "job":
                        assert data["status"] == "succeeded", data
                        break
            first.append(seen_first or float("nan"))
            final.append(time.perf_counter() - started)
    return first, final, deltas // max(n, 1)


async def _held(stack: Stack, n: int, hold_sec: float) -> dict:
    """Open n/2 streams and n/2 waits on queued jobs, hold them, then start the worker and see them end."""
    api = next(p for p in stack.procs if p.name.startswith("api"))
    async with client.session(stack.api_url, stack.token, connections=2 * n + 8) as http:
        ids, _, _ = await client.submit(http, n, in_flight=16)
        n_streams = n // 2
        memory_before, cpu_before = client.group_memory(api.pid), client.cpu_seconds(api.pid)
        threads_before = client.group_threads(api.pid)
        opened = asyncio.Event()
        first_events = 0
        outcome = {"streams": 0, "waits": 0, "errors": 0}

        async def stream(job_id: str) -> None:
            nonlocal first_events
            try:
                timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
                async with http.get(f"/api/agent/jobs/{job_id}/events", timeout=timeout) as response:
                    async for name, data in sse(response):
                        if name == "queued":
                            first_events += 1
                            if first_events == n_streams:
                                opened.set()
                        if name == "job" and data["status"] == "succeeded":
                            outcome["streams"] += 1
            except (TimeoutError, aiohttp.ClientError) as exc:
                outcome["errors"] += 1
                log(f"live: a stream failed: {exc!r}")

        async def wait(job_id: str) -> None:
            # A wait ends after 60 s at most: ask again until the job ended, as a client would.
            try:
                timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
                while True:
                    async with http.get(
                        f"/api/agent/jobs/{job_id}", params={"wait": "60"}, timeout=timeout
                    ) as response:
                        job = await response.json()
                    if job["status"] in client.TERMINAL:
                        outcome["waits"] += job["status"] == "succeeded"
                        return
            except (TimeoutError, aiohttp.ClientError) as exc:
                outcome["errors"] += 1
                log(f"live: a wait failed: {exc!r}")

        tasks = [asyncio.create_task(stream(job_id)) for job_id in ids[:n_streams]]
        tasks += [asyncio.create_task(wait(job_id)) for job_id in ids[n_streams:]]
        started = time.monotonic()
        await asyncio.wait_for(opened.wait(), timeout=600)
        await asyncio.sleep(1.0)  # the waits are sent too
        opened_sec = time.monotonic() - started
        cpu_held_start = client.cpu_seconds(api.pid)
        await asyncio.sleep(hold_sec)
        cpu_held = client.cpu_seconds(api.pid) - cpu_held_start
        memory_held = client.group_memory(api.pid)
        threads_held = client.group_threads(api.pid)
        log(f"live: {n_streams} streams and {n - n_streams} waits held; starting the worker ...")
        pool, concurrency = shipped_worker()
        stack.start_worker(pool=pool, concurrency=concurrency)
        released = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=600)
        drained_sec = time.monotonic() - released
    return {
        **outcome,
        "n": n,
        "streams_held": n_streams,
        "waits_held": n - n_streams,
        "opened_sec": opened_sec,
        "hold_sec": hold_sec,
        "cpu_held": cpu_held,
        "cpu_open": cpu_held_start - cpu_before,
        "memory_before": memory_before,
        "memory_held": memory_held,
        "threads_before": threads_before,
        "threads_held": threads_held,
        "drained_sec": drained_sec,
    }


def run(template: Template, *, smoke: bool) -> Section:
    n = 30 if smoke else 100
    held_n = 50 if smoke else 1000
    hold_sec = 2.0 if smoke else 10.0
    pool, concurrency = shipped_worker()
    with Stack(template, "live") as stack:
        stack.start(worker=(pool, concurrency))
        log(f"live: {n} jobs waited for, {n} polled ...")
        waited, polled, statuses = asyncio.run(_waited(stack, n))
        log(f"live: {n} bare Celery round trips ...")
        client.bare_round_trips(WARM_UP)
        bare = client.bare_round_trips(n)
        log(f"live: {n} jobs streamed ...")
        first, final, deltas = asyncio.run(_streamed(stack, n))
        worker = next(p for p in stack.procs if p.name.startswith("worker"))
        worker.stop()
        stack.procs.remove(worker)
        log(f"live: {held_n} streams and waits ...")
        held = asyncio.run(_held(stack, held_n, hold_sec))

    wait_s, poll_s, bare_s = client.summary_ms(waited), client.summary_ms(polled), client.summary_ms(bare)
    first_s, final_s = client.summary_ms(first), client.summary_ms(final)
    keys = ("p50", "p95", "p99", "mean")
    rows = [
        ["job, POST → terminal seen by `GET ?wait=30`", n] + [ms(wait_s[k]) for k in keys],
        [f"job, POST → terminal seen by polling every {POLL_SEC * 1000:.0f} ms", n]
        + [ms(poll_s[k]) for k in keys],
        ["**baseline**: bare Celery `apply_async(agent.noop)` + `AsyncResult.get()`", n]
        + [ms(bare_s[k]) for k in keys],
        ["ratio job (wait) / bare", ""] + [ratio(wait_s[k] / bare_s[k]) for k in keys],
        ["ratio job (polled) / bare", ""] + [ratio(poll_s[k] / bare_s[k]) for k in keys],
        ["job, POST → first `llm.delta` on `/events`", n] + [ms(first_s[k]) for k in keys],
        ["job, POST → final `job` event on `/events`", n] + [ms(final_s[k]) for k in keys],
    ]
    mem_before, mem_held = held["memory_before"], held["memory_held"]
    per_connection_kib = (mem_held["rss"] - mem_before["rss"]) * 1024 / held_n
    held_rows = [
        [
            "API, idle (jobs queued, nothing open)",
            f"{mem_before['rss']:.0f}",
            f"{mem_before['pss']:.0f}",
            str(held["threads_before"]),
            "",
            "",
        ],
        [
            f"API holding {held['streams_held']} streams + {held['waits_held']} waits",
            f"{mem_held['rss']:.0f}",
            f"{mem_held['pss']:.0f}",
            str(held["threads_held"]),
            f"{held['cpu_open']:.2f} s to open them ({held['opened_sec']:.1f} s)",
            f"{held['cpu_held'] / held['hold_sec'] * 100:.1f}% of a core while held",
        ],
    ]
    body = "\n".join(
        [
            table(["path", "n", "p50 (ms)", "p95 (ms)", "p99 (ms)", "mean (ms)"], rows),
            "",
            table(
                [
                    "API (gunicorn master + 2 uvicorn workers)",
                    "RSS (MiB)",
                    "PSS (MiB)",
                    "threads",
                    "CPU",
                    "idle",
                ],
                held_rows,
            ),
            "",
            f"Worker: `{pool}` pool, concurrency {concurrency} (shipped); API: gunicorn with 2 uvicorn workers "
            f"(ASGI, shipped); stub LLM (it streams word by word: {deltas} `llm.delta` events per job, the "
            f"worker writes a burst within 25 ms as one); jobs one at a time after {WARM_UP} warm-up jobs. "
            f"Job outcomes: {statuses}. Held connections: {held['streams_held']} SSE streams and "
            f"{held['waits_held']} `?wait=60` "
            f"requests from one aiohttp client process, held {held['hold_sec']:.0f} s with the worker stopped "
            f"(about {per_connection_kib:.0f} KiB of API RSS each); then the worker was started and "
            f"{held['streams']} streams and {held['waits']} waits ended with their succeeded job in "
            f"{held['drained_sec']:.1f} s, {held['errors']} errors.",
        ]
    )
    figures = {
        "wait": wait_s,
        "polled": poll_s,
        "bare": bare_s,
        "first_delta": first_s,
        "final_event": final_s,
        "held": held,
        "statuses": statuses,
    }
    return Section("live", "Live jobs: waiting and streaming", body, figures)
