"""Errors of the agent core (framework-free).

`ImproperlyConfigured` is the project-wide one from `core.errors` (a bad environment, or the seed's
`byo_key` mode without a key); the others are the pipeline's own.
"""

from core.errors import ImproperlyConfigured

__all__ = [
    "AgentError",
    "Cancelled",
    "DeadlineExceeded",
    "ImproperlyConfigured",
    "InvalidQuery",
    "VectorStoreUnavailable",
]


class AgentError(Exception):
    """Base class for errors raised by the agent core. `code` is machine-readable."""

    code = "agent_error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class VectorStoreUnavailable(AgentError):
    """The vector store is missing, corrupt, or does not match its manifest or the embedding model.

    The pipeline turns it into degraded mode (exact search over the catalogue).
    """

    code = "vector_store_unavailable"


class VectorStoreMissing(VectorStoreUnavailable):
    """There is no store at the configured directory (and no build running): one has to be built or imported."""


class VectorStoreBuilding(VectorStoreUnavailable):
    """There is no store yet because a build is running; nobody has to act, it will appear when done."""

    def __init__(self, *, done: int, total: int):
        self.done = done
        self.total = total
        super().__init__(f"vector store is being built, {done}/{total} documents")


class InvalidQuery(AgentError):
    """The query or its options are invalid; the job fails without retry."""

    code = "invalid_query"


class DeadlineExceeded(AgentError):
    """The job's deadline passed before the pipeline could finish."""

    code = "deadline_exceeded"


class Cancelled(AgentError):
    """The job was cancelled; the pipeline stops at the next step boundary.

    `llm_result`: when the cancel stopped an LLM call that had already produced text (a stream closed
    mid-answer), the call's result dict as far as it went, with its (estimated) tokens and cost: the
    provider was paid for them. None when no call was under way.
    """

    code = "cancelled"
    llm_result: dict | None = None
