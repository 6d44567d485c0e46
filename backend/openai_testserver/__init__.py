"""The project's own OpenAI-compatible test server: `python -m openai_testserver --port 8089`.

From tests and benchmarks::

    from openai_testserver import start_in_thread

    with start_in_thread(latency_ms=50) as server:   # server.base_url -> LLM_BASE_URL
        server.control(fault="429", retry_after=1, fail_times=1)
        ...
        assert len(server.requests("/v1/chat/completions")) == 2

`start_subprocess(...)` returns the same kind of handle for a server in a child process.
"""

from openai_testserver.server import (
    FAULTS,
    OpenAITestServer,
    ServerHandle,
    ServerOptions,
    start_in_thread,
    start_subprocess,
)

__all__ = [
    "FAULTS",
    "OpenAITestServer",
    "ServerHandle",
    "ServerOptions",
    "start_in_thread",
    "start_subprocess",
]
