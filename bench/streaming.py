"""Streamed LLM calls: the CPU a streamed answer costs the worker, against one plain call.

One thread of this process calls the project's OpenAI-compatible test server (a child process, answers at
once, one chunk per word) through the runnable the worker uses (`build_llm_runnable`): the plain call
(`invoke`, the baseline), the shipped stream (`llm_factory.streaming.stream`: the provider's chunks read as
JSON objects, `OpenAICompatibleLLM._post_chat`) and the same stream through the SDK's typed
`chat.completions.create(stream=True)`, which builds a `ChatCompletionChunk` for every chunk (what the
shipped path did before). CPU is this process's (`time.process_time`), so the server's is not in it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from bench.report import Section, ratio, table
from bench.stack import BACKEND, Stack, Template, log

PROMPT = [{"role": "user", "content": "Recommend a book about the sea. " * 10}]


def ms(value: float) -> str:
    return f"{value:,.2f}"  # a call is a few milliseconds: two places


def _measure(call: Callable[[], dict[str, Any]], n: int) -> dict[str, float]:
    """Milliseconds of CPU and of wall time per call, after a warm-up."""
    for _ in range(max(3, n // 10)):  # warm-up: connections, caches
        call()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        result = call()
        if result.get("error"):
            raise RuntimeError(f"the call failed: {result['error']}")
    return {"cpu": (time.process_time() - cpu) / n * 1000, "wall": (time.perf_counter() - wall) / n * 1000}


def run(template: Template, *, smoke: bool) -> Section:
    if str(BACKEND) not in sys.path:
        sys.path.insert(0, str(BACKEND))  # the core is plain Python: no Django needed
    from agent.config import LLMSettings
    from agent.llm_factory import build_llm_runnable
    from agent.llm_factory.streaming import stream

    n = 20 if smoke else 500
    with Stack(template, "streaming") as stack:
        stack.start_llm_server(0)
        settings = LLMSettings.from_env(
            {
                "LLM_PROVIDER": "openai_compatible",
                "LLM_BASE_URL": stack.llm_base_url,
                "LLM_API_KEY": stack.env["LLM_API_KEY"],
                "LLM_MODEL": "bench-model",
            }
        )
        shipped = build_llm_runnable(settings=settings)
        typed = build_llm_runnable(settings=settings)
        typed._post_chat = lambda client, kwargs: client.chat.completions.create(**kwargs)
        chunks: list[str] = []
        log(f"streaming: {n} calls each ...")
        plain_s = _measure(lambda: shipped.invoke(PROMPT), n)
        shipped_s = _measure(lambda: stream(shipped, PROMPT, on_delta=chunks.append), n)
        per_call = len(chunks) / (n + max(3, n // 10))
        typed_s = _measure(lambda: stream(typed, PROMPT, on_delta=chunks.append), n)
    rows = [
        ["**baseline**: one plain call (`invoke`)", ms(plain_s["cpu"]), ms(plain_s["wall"]), "1.00x"],
        [
            "streamed, shipped (chunks read as JSON objects)",
            ms(shipped_s["cpu"]),
            ms(shipped_s["wall"]),
            ratio(shipped_s["cpu"] / plain_s["cpu"]),
        ],
        [
            "streamed, the SDK's typed chunks (before)",
            ms(typed_s["cpu"]),
            ms(typed_s["wall"]),
            ratio(typed_s["cpu"] / plain_s["cpu"]),
        ],
    ]
    body = "\n".join(
        [
            table(["call", "CPU per call (ms)", "wall per call (ms)", "CPU / plain call"], rows),
            "",
            f"{n} calls of each kind, one after the other in one thread, against the project's test server "
            f"(a child process, no latency); an answer of {per_call:.0f} chunks (one per word) plus the usage "
            "chunk. CPU is the calling process's only.",
        ]
    )
    figures = {"n": n, "plain": plain_s, "shipped": shipped_s, "typed": typed_s, "chunks": per_call}
    return Section("streaming", "Streaming: CPU of a streamed answer against a plain call", body, figures)
