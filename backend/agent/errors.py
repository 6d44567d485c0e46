"""Errors of the agent core.

The core runs without Django, yet the seed's contract says a misconfiguration raises
`ImproperlyConfigured`; when Django is installed we raise Django's own class so that callers
catching it (and Django's start-up) see the usual exception.
"""

try:
    from django.core.exceptions import ImproperlyConfigured
except ImportError:  # pragma: no cover - the core without Django

    class ImproperlyConfigured(Exception):  # type: ignore[no-redef]
        """The configuration (environment) is invalid."""


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
    """The job was cancelled; the pipeline stops at the next step boundary."""

    code = "cancelled"


def env_error(variable: str, value: object, expected: str) -> ImproperlyConfigured:
    """An `ImproperlyConfigured` that names the variable, the bad value and what is allowed."""
    return ImproperlyConfigured(f"{variable}={value!r} is invalid: expected {expected}.")
