"""Live views of a job: `GET /api/agent/jobs/<id>?wait=` and `GET /api/agent/jobs/<id>/events` (SSE).

Both are async (Django async views under the ASGI server): an open wait or stream is a coroutine blocked
on a Redis read (`services/job_events.py`), not a thread. Authentication, owner isolation, validation and
the error shape stay DRF's: each request first goes through the operation's DRF view (run in Django's
thread for sync code, as any sync view under ASGI), and only a request that view accepts waits or streams.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.renderers import BaseRenderer
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder
from rest_framework.views import APIView

from apps.agent import selectors
from apps.agent.apis.common import ERRORS, output
from apps.agent.apis.jobs import JobDetailApi, job_payload, wait_seconds
from apps.agent.models import AgentJob
from apps.agent.serializers import JobSerializer
from apps.agent.services import job_events
from apps.core.renderers import JSONRenderer

LAST_EVENT_ID_HEADER = "Last-Event-ID"
LAST_EVENT_ID_PARAM = "last_event_id"

View = Callable[..., Awaitable[HttpResponseBase]]


def _async_view(
    view_class: type[APIView],
    handler: Callable[..., Awaitable[HttpResponseBase]],
    *,
    stays_open: Callable[[HttpRequest], bool] | None = None,
) -> View:
    """An async view that calls `handler(request, drf_view, **kwargs)`, where `drf_view` is the class's
    DRF view made awaitable. It carries the class (`cls`) so that the schema generator documents it.

    `stays_open(request)` says whether a request may wait; one that will not can run the plain DRF view
    (`plain_view`) under a sync handler (`PlainUnlessOpenMiddleware`). Without it, every request may.
    """
    drf_view = view_class.as_view()
    call = sync_to_async(drf_view)

    async def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        return await handler(request, call, *args, **kwargs)

    view.cls = drf_view.cls  # type: ignore[attr-defined]
    view.initkwargs = drf_view.initkwargs  # type: ignore[attr-defined]
    view.csrf_exempt = True  # type: ignore[attr-defined]
    view.plain_view = drf_view  # type: ignore[attr-defined]
    view.stays_open = stays_open or (lambda request: True)  # type: ignore[attr-defined]
    return markcoroutinefunction(view)


class PlainUnlessOpenMiddleware:
    """Under a sync handler, a request to a live view that will not stay open runs the plain DRF view.

    The live views are async so that a waiting request holds no thread. Called from a sync handler
    (Django's WSGI handler, where config/asgi.py sends every request that is not live; the plain WSGI
    server; the test client), an async view costs each request a new thread and event loop (asgiref's
    AsyncToSync): a plain job GET took 3.75 ms through the test client against 2.36 ms without them (see
    docs/benchmarks.md, "Polling"). Last in MIDDLEWARE, so that the others' `process_view` run first. Under
    the ASGI handler (live requests only) it has no `process_view` and only passes the request on.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)
        else:
            self.process_view = self._plain_view

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)

    @staticmethod
    def _plain_view(
        request: HttpRequest, view: Callable, args: tuple, kwargs: dict
    ) -> HttpResponseBase | None:
        if getattr(view, "plain_view", None) is None or view.stays_open(request):
            return None
        return view.plain_view(request, *args, **kwargs)


# --- ?wait= ---------------------------------------------------------------------------------------------


def _waits(request: HttpRequest) -> bool:
    return request.method == "GET" and request.GET.get("wait") is not None


async def _job_detail(request: HttpRequest, call: Callable, job_id: Any) -> HttpResponseBase:
    if not _waits(request):
        return await call(request, job_id=job_id)
    started = time.monotonic()
    # The newest event id is read before the job: a final event written after the read is after it.
    cursor = await job_events.last_id(job_id=job_id)
    response = await call(request, job_id=job_id)
    if response.status_code != 200 or response.data["status"] in job_events.TERMINAL_STATUSES:
        return response
    left = wait_seconds(request) - (time.monotonic() - started)
    if cursor is None or left <= 0:  # Redis cannot be read (then no wait), or nothing to wait for
        return response
    await job_events.end_wait(
        job_id=job_id, after=cursor, timeout=left, job_status=lambda: sync_to_async(_job_status)(job_id)
    )
    return await call(request, job_id=job_id)


job_detail = _async_view(JobDetailApi, _job_detail, stays_open=_waits)


# --- /events --------------------------------------------------------------------------------------------


class EventStreamRenderer(BaseRenderer):
    """Lets DRF accept `Accept: text/event-stream` (what EventSource sends); the body is streamed by
    `job_events_view`, never rendered here."""

    media_type = "text/event-stream"
    format = "sse"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return b""


def last_event_id(request: HttpRequest) -> str | None:
    """The client's last event id: the `Last-Event-ID` header (which EventSource updates when it
    reconnects) or else the `last_event_id` query parameter. Raises `ValidationFailed` when malformed."""
    header = request.headers.get(LAST_EVENT_ID_HEADER)
    if header is not None and header.strip():
        return job_events.event_id_parse(header)
    return job_events.event_id_parse(request.GET.get(LAST_EVENT_ID_PARAM))


class JobEventsApi(APIView):
    """Checks a stream request (auth, owner, `Last-Event-ID`); `job_events_view` then streams."""

    renderer_classes = [EventStreamRenderer, JSONRenderer]
    # GET only: DRF answers OPTIONS itself with a 200 without calling `get`, that is without the owner
    # check, and a 200 is what opens the stream.
    http_method_names = ["get"]

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if response.status_code >= 400:  # errors keep the one JSON error shape
            response.accepted_renderer = JSONRenderer()
            response.accepted_media_type = JSONRenderer.media_type
        return response

    @extend_schema(
        operation_id="agent_jobs_events",
        summary="Stream a job's progress and answer as Server-Sent Events",
        description=(
            "Events `queued`, `started`, `retrieval`, `llm.delta`, `llm.done`, `degraded`, then a final "
            "`job` (the GET payload), after which the stream closes. Resume with `Last-Event-ID`. "
            "See docs/api.md."
        ),
        parameters=[
            OpenApiParameter(
                LAST_EVENT_ID_HEADER,
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="Resume: only the events after this id are sent.",
            ),
            OpenApiParameter(
                LAST_EVENT_ID_PARAM,
                OpenApiTypes.STR,
                description=f"Like the {LAST_EVENT_ID_HEADER} header (which wins when both are given).",
            ),
        ],
        responses={
            (200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description="The event stream."),
            (400, "application/json"): ERRORS[400],
            (401, "application/json"): ERRORS[401],
            (404, "application/json"): ERRORS[404],
        },
    )
    def get(self, request, job_id):
        last_event_id(request)
        job = selectors.job_get(user=request.user, job_id=job_id)
        return Response({"status": job.status})


def _encode(data: Any) -> bytes:
    return json.dumps(data, cls=JSONEncoder, separators=(",", ":"), ensure_ascii=False).encode()


def _job_status(job_id: Any) -> str | None:
    return AgentJob.objects.filter(id=job_id).values_list("status", flat=True).first()


def _job_history(job_id: Any) -> list[job_events.Event]:
    return job_events.history_rebuild(job=AgentJob.objects.get(id=job_id))


def _final_payload(job_id: Any) -> dict[str, Any]:
    return output(JobSerializer, job_payload(AgentJob.objects.get(id=job_id), None))


async def _job_events(request: HttpRequest, call: Callable, job_id: Any) -> HttpResponseBase:
    response = await call(request, job_id=job_id)
    if response.status_code != 200:  # a method other than GET included (JobEventsApi: 405)
        return response
    events = job_events.event_stream(
        job_id=job_id,
        after=last_event_id(request),
        job_status=lambda: sync_to_async(_job_status)(job_id),
        job_history=lambda: sync_to_async(_job_history)(job_id),
        final_payload=lambda: sync_to_async(_final_payload)(job_id),
    )

    async def body():
        async for event in events:
            yield job_events.sse_format(event, encode=_encode)

    stream = StreamingHttpResponse(body(), content_type="text/event-stream; charset=utf-8")
    stream["Cache-Control"] = "no-cache"
    stream["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return stream


def _streams(request: HttpRequest) -> bool:
    return request.method == "GET"


job_events_view = _async_view(JobEventsApi, _job_events, stays_open=_streams)
