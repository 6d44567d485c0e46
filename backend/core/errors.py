"""The project's typed errors, framework-free.

`ApplicationError` and its subclasses are what services raise for a client's mistake or a refused
request: each carries one HTTP status (a plain int) and one machine-readable `code`. They are rendered in
the one error shape `{"error": {"code", "message", "details"}}` by `apps/core/http_errors.py`, the one
place that knows DRF. `ImproperlyConfigured` is a bad deployment (environment) or a misuse of the LLM
factory (the seed's `byo_key` without a key).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class ImproperlyConfigured(Exception):
    """The configuration (environment) is invalid, or a runnable was asked for without what it needs."""


class ApplicationError(Exception):
    """A typed error that maps to one HTTP status and one machine-readable code."""

    status_code: int = HTTPStatus.BAD_REQUEST
    code = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, details: Any = None, headers: dict | None = None
    ):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}
        if code:
            self.code = code


class ValidationFailed(ApplicationError):
    status_code = HTTPStatus.BAD_REQUEST
    code = "validation_error"


class NotFound(ApplicationError):
    status_code = HTTPStatus.NOT_FOUND
    code = "not_found"


class Conflict(ApplicationError):
    status_code = HTTPStatus.CONFLICT
    code = "conflict"


class IdempotencyMismatch(ApplicationError):
    status_code = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "idempotency_key_reused"


class RequestTooLarge(ApplicationError):
    status_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "request_too_large"


class ServiceUnavailable(ApplicationError):
    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    code = "service_unavailable"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The one error shape of the API."""
    return {"error": {"code": code, "message": message, "details": details}}
