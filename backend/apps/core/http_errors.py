"""The HTTP side of `core.errors`: every error leaves the API in the one shape
{"error": {"code", "message", "details"}}.

`exception_handler` (DRF's EXCEPTION_HANDLER) renders `ApplicationError`s and DRF's own exceptions;
`RequestSizeLimitMiddleware` refuses oversized bodies before anything reads them;
`ApiErrorShapeMiddleware` (the outermost) rewrites what Django answers by itself under /api/ (no route, a
crash outside a view, DEBUG's pages). Unknown exceptions stay 500: they are bugs.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, JsonResponse
from django.middleware import common
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


class SyncAndAsyncMiddleware:
    """A middleware that runs as its caller does, sync under WSGI and async under ASGI, with no thread hop.

    Django's `MiddlewareMixin` runs `process_request`/`process_response` in a thread under ASGI: every
    request, open event streams included, would take one. A subclass gives `before(request)` (a response
    it returns ends the request there) and/or `after(request, response)`, plain functions of no I/O.
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
        return self.before(request) or self.after(request, self.get_response(request))

    async def _acall(self, request):
        return self.before(request) or self.after(request, await self.get_response(request))

    def before(self, request) -> Any:
        return None

    def after(self, request, response) -> Any:
        return response


class RequestSizeLimitMiddleware(SyncAndAsyncMiddleware):
    """413 in the error shape for a body larger than DATA_UPLOAD_MAX_MEMORY_SIZE, before anything reads it.

    Django enforces the limit only when `request.body` or `request.POST` is read, and renders a bare 400;
    checking the declared Content-Length first refuses a flood before authentication, parsing or a view.
    A body without Content-Length (chunked) is not read by Django's WSGI handler at all.

    Sync and async (`SyncAndAsyncMiddleware`).
    """

    def before(self, request) -> JsonResponse | None:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is not None and length > limit:
            exc = request_too_large()
            return JsonResponse(error_body(exc.code, exc.message, exc.details), status=exc.status_code)
        return None


# --- Everything under /api/ that DRF never rendered ------------------------------------------------------
# A URL that matches no route (e.g. /api/agent/jobs/not-a-uuid), a Host header that is not allowed, a CSRF
# refusal or a crash outside DRF: Django renders these as HTML pages, and with DEBUG=true as its debug pages
# (which list every URL pattern). Under /api/ they keep the one error shape, in every mode.

# The code of an error by status, for responses that carry no code of their own.
STATUS_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    414: "uri_too_long",
    431: "request_header_fields_too_large",
    500: "internal_error",
}
STATUS_MESSAGES = {
    400: "Bad request.",
    403: "Forbidden.",
    404: "No such endpoint or object.",
    405: "Method not allowed.",
    500: "Internal server error.",
}


def status_error_body(status_code: int, message: str | None = None) -> dict[str, Any]:
    """The error shape for a bare HTTP status (Django's own error pages, gunicorn's: config/gunicorn.conf.py)."""
    try:
        default = HTTPStatus(status_code).phrase + "."
    except ValueError:
        default = "Error."
    return error_body(
        STATUS_CODES.get(status_code, "error"), message or STATUS_MESSAGES.get(status_code, default)
    )


class ApiErrorShapeMiddleware(SyncAndAsyncMiddleware):
    """Outermost middleware: an error response under /api/ that is not JSON becomes the one error shape.

    DRF's views already answer in it (exception_handler); this catches what Django answers by itself.
    The status and an `Allow` header are kept; the page's body (HTML) is dropped.

    Sync and async (`SyncAndAsyncMiddleware`): a sync-only outermost middleware would hold a thread for
    every open wait under the ASGI server.
    """

    def after(self, request, response):
        if (
            response.status_code >= 400
            and request.path.startswith("/api/")
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            shaped = JsonResponse(status_error_body(response.status_code), status=response.status_code)
            if response.has_header("Allow"):
                shaped["Allow"] = response["Allow"]
            return shaped
        return response


class CommonMiddleware(common.CommonMiddleware):
    """Django's, except that under /api/ a POST (or any unsafe method) to a URL that lacks its trailing
    slash is not redirected: a 301 loses the body (clients resend a GET), and with DEBUG Django raises a
    RuntimeError instead (a 500). It gets a 404 in the error shape that names the URL to use."""

    def should_redirect_with_slash(self, request):
        return not _unsafe_api_request(request) and super().should_redirect_with_slash(request)

    def process_response(self, request, response):
        if (
            response.status_code == 404
            and _unsafe_api_request(request)
            and super().should_redirect_with_slash(request)
        ):
            path = request.path + "/"
            return JsonResponse(
                error_body(
                    "not_found", f"No such endpoint: the URL ends with a slash, {path}", {"path": path}
                ),
                status=404,
            )
        return super().process_response(request, response)


def _unsafe_api_request(request) -> bool:
    return request.path_info.startswith("/api/") and request.method not in ("GET", "HEAD", "OPTIONS")
