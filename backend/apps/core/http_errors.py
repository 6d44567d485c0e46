"""The HTTP side of `core.errors`: every error leaves the API in the one shape
{"error": {"code", "message", "details"}}.

`exception_handler` (DRF's EXCEPTION_HANDLER) renders `ApplicationError`s and DRF's own exceptions;
`RequestSizeLimitMiddleware` refuses oversized bodies before anything reads them; `bad_request`,
`page_not_found` and `server_error` are Django's error views (config/urls.py) for what never reaches a
DRF view. Unknown exceptions stay 500: they are bugs.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import ApplicationError, RequestTooLarge, error_body


def request_too_large() -> RequestTooLarge:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return RequestTooLarge(f"The request body is larger than {limit} bytes.", details={"max_bytes": limit})


_DRF_CODES = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
    exceptions.ParseError: "parse_error",
    exceptions.ValidationError: "validation_error",
}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF exception handler rendering every known error in the one documented shape."""
    if isinstance(exc, ApplicationError):
        return Response(
            error_body(exc.code, exc.message, exc.details), status=exc.status_code, headers=exc.headers
        )
    if isinstance(exc, RequestDataTooBig):
        return exception_handler(request_too_large(), context)
    if isinstance(exc, SuspiciousOperation):
        # Django would answer a bare 400 page (too many fields, a malformed multipart body, ...).
        return Response(error_body("bad_request", str(exc) or "Bad request."), status=400)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
    if isinstance(exc, exceptions.ValidationError):
        message = "The request is invalid."
        details: Any = exc.detail
    else:
        message = str(getattr(exc, "detail", exc))
        details = None
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            details = {"retry_after_sec": int(exc.wait)}
    response.data = error_body(code, message, details)
    return response


class RequestSizeLimitMiddleware:
    """413 in the error shape for a body larger than DATA_UPLOAD_MAX_MEMORY_SIZE, before anything reads it.

    Django enforces the limit only when `request.body` or `request.POST` is read, and renders a bare 400;
    checking the declared Content-Length first refuses a flood before authentication, parsing or a view.
    A body without Content-Length (chunked) is not read by Django's WSGI handler at all.

    Sync and async: under the ASGI server a sync-only middleware would put every request, open event
    streams included, on a thread of its own.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.async_mode:
            return self._acall(request)
        return self._refusal(request) or self.get_response(request)

    async def _acall(self, request):
        return self._refusal(request) or await self.get_response(request)

    @staticmethod
    def _refusal(request) -> JsonResponse | None:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is not None and length > limit:
            exc = request_too_large()
            return JsonResponse(error_body(exc.code, exc.message, exc.details), status=exc.status_code)
        return None


# --- Django's error views (config/urls.py), for what never reaches a DRF view ---------------------------
# A URL that matches no route (e.g. /api/agent/jobs/not-a-uuid), a Host header that is not allowed, or a
# crash outside DRF would otherwise be an HTML page; under /api/ they keep the one error shape.


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


def bad_request(request, exception=None):
    if _is_api(request):
        return JsonResponse(error_body("bad_request", "Bad request."), status=400)
    return defaults.bad_request(request, exception)


def page_not_found(request, exception=None):
    if _is_api(request):
        return JsonResponse(error_body("not_found", "No such endpoint or object."), status=404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    if _is_api(request):
        return JsonResponse(error_body("internal_error", "Internal server error."), status=500)
    return defaults.server_error(request)
