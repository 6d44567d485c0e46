"""Concurrency: N jobs against an LLM that takes 2 s per call, all submitted at once to ONE worker process.

The makespan runs from the first POST to the last `finished_at`; the ideal is the submission time plus
one LLM latency (every job waits on the provider at the same time). Configurations: the one worker/start.sh
ships, the thread pool at several concurrencies, gevent, and prefork with Celery's default concurrency
(one child per CPU) as the baseline. Prefork at 2 would need ~N/2 × 2 s, so it runs a few jobs and the
figure for N is extrapolated (and labelled so).
"""

from __future__ import annotations

import asyncio
import math
import os

from bench import client
from bench.report import Section, ratio, table
from bench.stack import QUERIES, Stack, Template, log, shipped_worker

LATENCY_SEC = 2.0
SMOKE_LATENCY_SEC = 0.25
IN_FLIGHT = 16


def _gevent_available() -> bool:
    try:
        import gevent  # noqa: F401
    except ImportError:
        return False
    return True


def configurations(smoke: bool) -> list[tuple[str, int, bool]]:
    """(pool, concurrency, is_baseline). The shipped one first."""
    shipped = shipped_worker()
    prefork = ("prefork", os.cpu_count() or 1, True)
    if smoke:
        return [(*shipped, False), prefork]
    candidates = [("threads", 64), ("threads", 256), ("threads", 1000)]
    if _gevent_available():
        candidates += [("gevent", 1000)]
    rest = [(pool, c, False) for pool, c in candidates if (pool, c) != shipped]
    return [(*shipped, False), *rest, prefork]


async def _run_jobs(stack: Stack, n: int, timeout: float, warm_up: int) -> dict[str, float]:
    async with client.session(stack.api_url, stack.token, connections=IN_FLIGHT + 4) as http:
        # Warm-up: every question once (the embedding cache), LLM connections opened.
        await client.submit(http, warm_up, in_flight=IN_FLIGHT)
        await client.wait_all_terminal(http, timeout=120)
        cpu_before = stack.cpu()
        ids, first, last_post = await client.submit(http, n, in_flight=IN_FLIGHT)
        try:
            await client.wait_all_terminal(http, timeout=timeout)
            finished_all = True
        except TimeoutError as exc:  # reported in the table, not fatal: the other configurations run
            log(f"concurrency: {exc}")
            finished_all = False
        cpu = {name: used - cpu_before.get(name, 0.0) for name, used in stack.cpu().items()}
        last_finish, statuses = await client.finished(http, ids)
        rows = [row for row in await client.list_jobs(http) if row["id"] in set(ids)]
    return {
        "submit_s": last_post - first,
        "makespan_s": last_finish - first if finished_all else float("nan"),
        "timeout_s": None if finished_all else timeout,
        "statuses": statuses,
        "degraded": sum(1 for row in rows if row["degraded"]),
        "cpu_ms_per_job": {name: used * 1000 / n for name, used in cpu.items()},
    }


def run_one(
    template: Template, pool: str, concurrency: int, n: int, latency: float, *, smoke: bool = False
) -> dict:
    label = f"concurrency-{pool}-{concurrency}"
    with Stack(template, label) as stack:
        _, worker = stack.start(worker=(pool, concurrency), llm_latency_ms=latency * 1000)
        log(f"concurrency: {pool} x{concurrency}, {n} jobs of {latency:.1f} s ...")
        # A generous bound: prefork at 2 needs n/2 rounds of the latency.
        timeout = 120 + math.ceil(n / concurrency) * latency * 3
        # Prefork at 2 would spend rounds of the latency warming up every question; its children pay
        # ~25 ms per uncached query instead, which is nothing next to the LLM's seconds.
        warm_up = concurrency if pool == "prefork" else 4 if smoke else len(QUERIES)
        result = asyncio.run(_run_jobs(stack, n, timeout, warm_up))
        memory = client.group_memory(worker.pid)
        result["threads"] = client.threads_of(worker.pid)
    result.update(pool=pool, concurrency=concurrency, n=n, latency=latency)
    result["rss_mib"] = memory["rss"]
    result["pss_mib"] = memory["pss"]
    result["ideal_s"] = result["submit_s"] + latency
    result["ratio"] = result["makespan_s"] / result["ideal_s"]
    return result


def run(template: Template, *, smoke: bool) -> Section:
    n = 40 if smoke else 1000
    baseline_n = 4 if smoke else 20
    latency = SMOKE_LATENCY_SEC if smoke else LATENCY_SEC
    results = []
    for pool, concurrency, baseline in configurations(smoke):
        results.append(
            run_one(template, pool, concurrency, baseline_n if baseline else n, latency, smoke=smoke)
        )
        results[-1]["baseline"] = baseline
    shipped = shipped_worker()
    rows = []
    for r in results:
        name = f"`{r['pool']}` ×{r['concurrency']}"
        if (r["pool"], r["concurrency"]) == shipped:
            name += " (**shipped**)"
        if r["baseline"]:
            name += " (**baseline**: Celery's default)"
        ok = r["statuses"].get("succeeded", 0) - r["degraded"]
        makespan = f"{r['makespan_s']:.2f}"
        if r["timeout_s"] is not None:
            unfinished = {k: v for k, v in r["statuses"].items() if k not in client.TERMINAL}
            makespan = f"**did not finish** in {r['timeout_s']:.0f} s: {unfinished}"
        cpu = r["cpu_ms_per_job"]
        rows.append(
            [
                name,
                r["n"],
                f"{r['submit_s']:.2f}",
                makespan,
                f"{r['ideal_s']:.2f}",
                ratio(r["ratio"]) if r["timeout_s"] is None else "",
                f"{ok}/{r['n']}",
                f"{sum(v for k, v in cpu.items() if k.startswith('api')):.1f} + "
                f"{sum(v for k, v in cpu.items() if k.startswith('worker')):.1f}",
                f"{r['rss_mib']:.0f}",
            ]
        )
        if r["baseline"]:
            rounds = math.ceil(r["n"] / r["concurrency"])
            per_round = r["makespan_s"] / rounds
            extrapolated = math.ceil(n / r["concurrency"]) * per_round
            r["extrapolated_s"] = extrapolated
            ideal = results[0]["ideal_s"]
            rows.append(
                [
                    f"`{r['pool']}` ×{r['concurrency']}, **extrapolated** to {n} jobs "
                    f"({math.ceil(n / r['concurrency'])} rounds of {per_round:.2f} s)",
                    n,
                    "",
                    f"~{extrapolated:,.0f}",
                    f"{ideal:.2f}",
                    ratio(extrapolated / ideal),
                    "",
                    "",
                    "",
                ]
            )
    body = "\n".join(
        [
            table(
                [
                    "worker (one process)",
                    "jobs",
                    "submission (s)",
                    "makespan (s)",
                    "ideal (s)",
                    "makespan / ideal",
                    "answered by the LLM",
                    "CPU per job, API + worker (ms)",
                    "worker RSS after (MiB)",
                ],
                rows,
            ),
            "",
            f"The test server answers every chat completion after {latency:.1f} s. Jobs are POSTed through the API "
            f"({IN_FLIGHT} requests in flight) after a warm-up of {len(QUERIES)} jobs; ideal = submission time + "
            f'{latency:.1f} s. "Answered by the LLM" counts succeeded, non-degraded jobs (a job that timed out '
            "waiting would be degraded). CPU is user + system time of the API's and the worker's processes during "
            "the run, divided by the jobs. RSS is summed over the worker's processes (prefork: parent + children).",
        ]
    )
    return Section(
        "concurrency",
        f"Concurrency: {n} jobs waiting {latency:g} s on the LLM, one worker process",
        body,
        {"results": results},
    )
