"""Rate limit: 1,000 jobs against a provider limited to 600 requests per minute, two worker processes.

The project's test server enforces 600 RPM the way providers do (a token bucket: 10 per second, at most
10 at once) and answers 429 with Retry-After beyond it. Rows, each a fresh stack (API, two shipped
workers, the limited server), the jobs POSTed at once as batches of 500:
- **baseline**: no limiter (`LLM_RATE_RPM` empty), what the service did before: every job fires at once;
- `LLM_RATE_RPM=600` with the default job deadline (60 s): the last jobs would wait longer than that;
- `LLM_RATE_RPM=600` with `AGENT_JOB_TIMEOUT_SEC=150`: a deadline that allows the whole schedule;
- `LLM_RATE_RPM=600` with 64 threads per worker: the jobs beyond 128 wait in the queue, not in a worker.
Ideal makespan: n / 600 minutes (100 s for 1,000). Provider 429s are counted by the server (`/_stats`).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

from bench import client
from bench.report import Section, ratio, table
from bench.stack import QUERIES, Stack, Template, log, shipped_worker

RPM = 600
LATENCY_MS = 50
BATCH_SIZE = 500
WORKERS = 2
#: Threads per worker of the last row: 2 x 64 jobs in flight, the rest wait in the queue (no deadline runs).
SMALL_POOL = 64


def _provider_stats(stack: Stack) -> dict[str, int]:
    with urllib.request.urlopen(f"{stack.llm_root_url}/_stats", timeout=5) as response:
        return json.loads(response.read())


async def _run_jobs(stack: Stack, n: int, timeout: float) -> dict:
    """Submit `n` jobs as batches of at most BATCH_SIZE (a few POSTs, so that the API's speed on a busy
    machine does not pace the provider calls), wait for all, and count the outcomes."""
    async with client.session(stack.api_url, stack.token, connections=4) as http:
        first = time.time()
        for start in range(0, n, BATCH_SIZE):
            queries = [QUERIES[i % len(QUERIES)] for i in range(start, min(n, start + BATCH_SIZE))]
            async with http.post("/api/agent/batches", json={"queries": queries}) as response:
                if response.status != 202:
                    raise RuntimeError(
                        f"POST /api/agent/batches answered {response.status}: {await response.text()}"
                    )
        last_post = time.time()
        await client.wait_all_terminal(http, timeout=timeout)
        rows = await client.list_jobs(http)
        # Why the degraded ones were: the code of their LLM step's error.
        reasons: dict[str, int] = {}
        for row in rows:
            if row["degraded"]:
                job = await client.get_job(http, row["id"])
                llm = next((step for step in job["trace"] if step["name"] == "llm"), None)
                code = (llm or {}).get("error", {}) or {}
                reasons[code.get("code", "none")] = reasons.get(code.get("code", "none"), 0) + 1
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    return {
        "submit_s": last_post - first,
        "makespan_s": max(client.timestamp(row["finished_at"]) or 0.0 for row in rows) - first,
        "statuses": statuses,
        "degraded": sum(1 for row in rows if row["degraded"]),
        "degraded_by": reasons,
    }


def run_one(
    template: Template, label: str, n: int, env: dict[str, str], concurrency: int | None = None
) -> dict:
    """One configuration on a fresh stack: `env` goes to every process (the API records the job deadline
    at creation; the workers apply the limit); `concurrency` per worker (default: the shipped one)."""
    pool, shipped_concurrency = shipped_worker()
    concurrency = concurrency or shipped_concurrency
    with Stack(template, f"ratelimit-{label}") as stack:
        stack.env.update(env)
        waits = [stack.start_llm_server(LATENCY_MS, wait=False, rate_rpm=RPM), stack.start_api(wait=False)]
        for i in range(WORKERS):
            waits.append(stack.start_worker(pool=pool, concurrency=concurrency, name=f"rl{i}", wait=False))
        for proc in waits:
            proc.wait_ready()
        log(f"rate limit: {label}, {n} jobs against {RPM} RPM ...")
        result = asyncio.run(_run_jobs(stack, n, timeout=120 + n / RPM * 60 * 3))
        result["provider"] = _provider_stats(stack)
    result["ideal_s"] = n / RPM * 60
    result["ratio"] = result["makespan_s"] / result["ideal_s"]
    return result


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{count:,} `{code}`" for code, count in sorted(counts.items(), key=lambda kv: -kv[1]))


def run(template: Template, *, smoke: bool) -> Section:
    n = 30 if smoke else 1000
    configurations = [
        ("**baseline**: no limiter (`LLM_RATE_RPM` empty)", "off", {}, None),
        ("`LLM_RATE_RPM=600`, job deadline 60 s (default)", "on-60", {"LLM_RATE_RPM": str(RPM)}, None),
        (
            "`LLM_RATE_RPM=600`, `AGENT_JOB_TIMEOUT_SEC=150`",
            "on-150",
            {"LLM_RATE_RPM": str(RPM), "AGENT_JOB_TIMEOUT_SEC": "150"},
            None,
        ),
        (
            f"`LLM_RATE_RPM=600`, `WORKER_CONCURRENCY={SMALL_POOL}` (jobs wait in the queue)",
            "on-small",
            {"LLM_RATE_RPM": str(RPM)},
            SMALL_POOL,
        ),
    ]
    rows, results = [], {}
    for name, label, env, concurrency in configurations:
        r = results[label] = run_one(template, label, n, env, concurrency)
        answered = r["statuses"].get("succeeded", 0) - r["degraded"]
        rows.append(
            [
                name,
                n,
                f"{r['makespan_s']:.1f}",
                f"{r['ideal_s']:.1f}",
                ratio(r["ratio"]),
                f"{r['provider']['rate_limited']:,}",
                f"{r['degraded']:,}" + (f" ({_reasons(r['degraded_by'])})" if r["degraded"] else ""),
                f"{answered:,}/{n:,}",
                f"{r['provider']['calls']:,}",
            ]
        )
    pool, concurrency = shipped_worker()
    body = "\n".join(
        [
            table(
                [
                    "configuration",
                    "jobs",
                    "makespan (s)",
                    "ideal (s)",
                    "makespan / ideal",
                    "provider 429s (target 0)",
                    "jobs degraded",
                    "answered by the LLM",
                    "provider calls",
                ],
                rows,
            ),
            "",
            f"The test server allows {RPM} chat completions per minute (10 per second, at most 10 at once) and "
            f"answers each after {LATENCY_MS} ms; {WORKERS} worker processes (`{pool}` ×{concurrency}, shipped, "
            f"unless the row says otherwise) "
            f"share the limit in Redis. The jobs are POSTed as batches of {BATCH_SIZE} (`POST /api/agent/batches`); "
            f"makespan runs from the first POST to the last `finished_at`; ideal = jobs / {RPM} minutes. A job whose call got "
            "429 twice (one retry, `LLM_MAX_RETRIES=1`), or that found no slot before its deadline, is answered "
            "degraded (the retrieved books, `rate_limited` in its trace).",
        ]
    )
    return Section(
        "rate-limit",
        f"Rate limit: {n:,} jobs against a provider limited to {RPM} RPM, two workers",
        body,
        {"results": results},
    )
