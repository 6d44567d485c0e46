"""What the agent's endpoints share: documented errors and headers, header parsing, output serializers."""

from __future__ import annotations

import functools
import re
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse

from agent.config import BYO_KEY_HEADER
from agent.types import AgentOptions, Filters
from apps.core.serializers import ErrorResponseSerializer
from apps.webhooks.services import webhook_url_validate
from core.errors import ValidationFailed

UNAUTHENTICATED_RESPONSE = OpenApiResponse(ErrorResponseSerializer, description="Not authenticated.")

IDEMPOTENCY_HEADER = "Idempotency-Key"
POLL_AFTER_SEC = 1

ERRORS = {
    400: OpenApiResponse(ErrorResponseSerializer, description="Invalid input (the error shape)."),
    401: OpenApiResponse(ErrorResponseSerializer, description="Missing or invalid credentials."),
    404: OpenApiResponse(ErrorResponseSerializer, description="No such object for this user."),
}
# Operations that take a body: RequestSizeLimitMiddleware refuses one over DATA_UPLOAD_MAX_MEMORY_SIZE.
TOO_LARGE = {
    413: OpenApiResponse(
        ErrorResponseSerializer,
        description="`request_too_large`: the body is larger than DATA_UPLOAD_MAX_MEMORY_SIZE (64 KiB by default).",
    )
}
BYO_PARAM = OpenApiParameter(
    BYO_KEY_HEADER,
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Your own LLM provider key (cost modes byo_key and hybrid). Used for this job only, never stored.",
)
IDEMPOTENCY_PARAM = OpenApiParameter(
    IDEMPOTENCY_HEADER,
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Repeat-safe submissions: the same key and body return the same job; another body gets 422.",
)


def options_from(data: dict) -> AgentOptions:
    return AgentOptions(top_k=data["top_k"], filters=Filters.from_dict(data.get("filters")))


# A provider key is a token of visible ASCII; it ends up in an outbound Authorization header.
_API_KEY = re.compile(r"[\x21-\x7e]{1,4096}")
# An idempotency key is stored on the job: printable ASCII (no control characters), 200 at most.
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{0,200}")


def byo_key_from(request) -> str | None:
    """The user's key from the header, or None. Raises `ValidationFailed` (never echoing the value)."""
    key = (request.headers.get(BYO_KEY_HEADER) or "").strip()
    if key and not _API_KEY.fullmatch(key):
        raise ValidationFailed(
            f"The {BYO_KEY_HEADER} header must be 1..4096 visible ASCII characters.", code="invalid_header"
        )
    return key or None


def idempotency_key_from(request) -> str:
    key = (request.headers.get(IDEMPOTENCY_HEADER) or "").strip()
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ValidationFailed(
            "The Idempotency-Key header must be at most 200 printable ASCII characters.",
            code="invalid_header",
        )
    return key


def webhook_url_from(url: str) -> str:
    return webhook_url_validate(url=url) if url else ""


@functools.cache
def _output_serializer(serializer_class: type) -> Any:
    return serializer_class()


def output(serializer_class: type, data: dict) -> dict:
    """`serializer_class(data).data`, from one instance per class shared by every request and thread.

    Instantiating a serializer deep-copies its fields, nested serializers included: for a job that
    cost five times the serialisation itself (docs/benchmarks.md, "Polling"). `to_representation`
    keeps no state, so one instance serves all.
    """
    return _output_serializer(serializer_class).to_representation(data)
