"""Replace what job runs are wired to (`job_execution.runtime`) for one test, instead of patching
private functions: `wire_runtime(monkeypatch, llm_for=lambda job, key: FakeLLM())`."""

from __future__ import annotations

import dataclasses
from typing import Any

from apps.agent.services import job_execution


def wire_runtime(monkeypatch, **parts: Any) -> job_execution.JobRuntime:
    """Set the given parts (retriever, exact_search, store_identity, llm_for) for this test; returns the
    runtime now in use."""
    wired = dataclasses.replace(job_execution.runtime, **parts)
    monkeypatch.setattr(job_execution, "runtime", wired)
    return wired
