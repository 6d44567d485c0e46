"""The agent HTTP API: one view per operation, an input serializer, a service call, an output serializer."""

from __future__ import annotations

import functools
import re
from typing import Any

from django.http import Http404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from agent.config import BYO_KEY_HEADER
from agent.types import AgentOptions, Filters
from apps.agent import reports, selectors
from apps.agent.errors import ValidationFailed
from apps.agent.models import AgentJob, Batch
from apps.agent.pagination import Pagination
from apps.agent.reports import CSVRenderer, HTMLRenderer
from apps.agent.serializers import (
    AgentQuerySerializer,
    AgentResponseSerializer,
    BatchCreateInputSerializer,
    BatchSerializer,
    BatchSummarySerializer,
    ErrorResponseSerializer,
    HealthSerializer,
    JobAcceptedSerializer,
    JobCreateInputSerializer,
    JobSerializer,
    JobSummarySerializer,
)
from apps.agent.services import batches as batch_services
from apps.agent.services import job_events
from apps.agent.services import jobs as job_services
from apps.agent.services.health import health_check
from apps.agent.throttling import BatchCreateThrottle, JobCreateThrottle

IDEMPOTENCY_HEADER = "Idempotency-Key"
POLL_AFTER_SEC = 1

ERRORS = {
    400: OpenApiResponse(ErrorResponseSerializer, description="Invalid input (the error shape)."),
    401: OpenApiResponse(ErrorResponseSerializer, description="Missing or invalid credentials."),
    404: OpenApiResponse(ErrorResponseSerializer, description="No such object for this user."),
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


def _options(data: dict) -> AgentOptions:
    return AgentOptions(top_k=data["top_k"], filters=Filters.from_dict(data.get("filters")))


# A provider key is a token of visible ASCII; it ends up in an outbound Authorization header.
_API_KEY = re.compile(r"[\x21-\x7e]{1,4096}")
# An idempotency key is stored on the job: printable ASCII (no control characters), 200 at most.
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{0,200}")


def _byo_key(request) -> str | None:
    """The user's key from the header, or None. Raises `ValidationFailed` (never echoing the value)."""
    key = (request.headers.get(BYO_KEY_HEADER) or "").strip()
    if key and not _API_KEY.fullmatch(key):
        raise ValidationFailed(
            f"The {BYO_KEY_HEADER} header must be 1..4096 visible ASCII characters.", code="invalid_header"
        )
    return key or None


def _idempotency_key(request) -> str:
    key = (request.headers.get(IDEMPOTENCY_HEADER) or "").strip()
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ValidationFailed(
            "The Idempotency-Key header must be at most 200 printable ASCII characters.",
            code="invalid_header",
        )
    return key


def _validate_webhook_url(url: str) -> str:
    from apps.webhooks.services import webhook_url_validate

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


def job_payload(job: AgentJob, request) -> dict:
    """The full view of a job, as documented by `JobSerializer`."""
    result = job.result or {}
    queue_ms = run_ms = None
    if job.started_at:
        queue_ms = (job.started_at - job.created_at).total_seconds() * 1000
    if job.finished_at and job.started_at:
        run_ms = (job.finished_at - job.started_at).total_seconds() * 1000
    webhook = None
    if job.webhook_url:
        from apps.webhooks.selectors import delivery_state_for_job

        webhook = delivery_state_for_job(job)
    return {
        "id": job.id,
        "status": job.status,
        "query": job.query,
        "options": job.options,
        "degraded": job.degraded,
        "message": result.get("message"),
        "results": result.get("results", []),
        "actions": result.get("actions", []),
        "trace": selectors.job_trace(job=job) if job.is_terminal else [],
        "error": job.error,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "timings": {
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "queue_ms": queue_ms,
            "run_ms": run_ms,
        },
        "usage": {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.completion_tokens,
            "estimated": job.usage_estimated,
        },
        "cost_usd": float(job.cost_usd),
        "cost": {
            "mode": job.cost_mode,
            "key_source": job.key_source,
            "provider": job.provider,
            "model": job.model,
        },
        "vector_store": job.vector_store,
        "parent_id": job.parent_id,
        "batch_id": job.batch_id,
        "webhook": webhook,
        "poll_url": reverse("agent-job-detail", args=[job.id]),
    }


class JobListCreateApi(APIView):
    pagination_class = Pagination  # also read by the schema generator: the list is paginated

    def get_throttles(self):
        return [JobCreateThrottle()] if self.request.method == "POST" else []

    @extend_schema(
        operation_id="agent_jobs_create",
        summary="Submit a question as an asynchronous job",
        request=JobCreateInputSerializer,
        parameters=[BYO_PARAM, IDEMPOTENCY_PARAM],
        responses={
            202: JobAcceptedSerializer,
            **ERRORS,
            422: OpenApiResponse(
                ErrorResponseSerializer, description="Idempotency-Key reused with another body."
            ),
            429: OpenApiResponse(ErrorResponseSerializer, description="Throttled."),
            503: OpenApiResponse(ErrorResponseSerializer, description="A required service is down."),
        },
        examples=[
            OpenApiExample(
                "Fantasy for children",
                value={
                    "query": "fantasy novels for children with dragons",
                    "top_k": 3,
                    "filters": {"language": "en"},
                },
                request_only=True,
            )
        ],
    )
    def post(self, request):
        data = JobCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        webhook_url = _validate_webhook_url(data.validated_data.get("webhook_url", ""))
        job, created = job_services.job_create(
            owner=request.user,
            query=data.validated_data["query"],
            options=_options(data.validated_data),
            webhook_url=webhook_url,
            idempotency_key=_idempotency_key(request),
            byo_api_key=_byo_key(request),
        )
        poll_url = reverse("agent-job-detail", args=[job.id])
        body = output(JobAcceptedSerializer, {"id": job.id, "status": job.status, "poll_url": poll_url})
        return Response(
            body,
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": poll_url, "Retry-After": str(POLL_AFTER_SEC)},
        )

    @extend_schema(
        operation_id="agent_jobs_list",
        summary="List your jobs, newest first",
        parameters=[
            OpenApiParameter(
                "status", OpenApiTypes.STR, enum=["queued", "running", "succeeded", "failed", "cancelled"]
            )
        ],
        responses={200: JobSummarySerializer(many=True), **ERRORS},
    )
    def get(self, request):
        qs = selectors.job_list(user=request.user, status=request.query_params.get("status"))
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            qs.only("id", "status", "query", "degraded", "created_at", "finished_at"), request, view=self
        )
        rows = [
            {
                "id": job.id,
                "status": job.status,
                "query": job.query,
                "degraded": job.degraded,
                "created_at": job.created_at,
                "finished_at": job.finished_at,
                "poll_url": reverse("agent-job-detail", args=[job.id]),
            }
            for job in page
        ]
        return paginator.get_paginated_response([output(JobSummarySerializer, row) for row in rows])


WAIT_MAX_SEC = job_events.WAIT_MAX_SEC


def wait_seconds(request) -> float:
    """The `wait` query parameter in seconds (0 when absent). Raises `ValidationFailed` when it is not a
    number from 0 to WAIT_MAX_SEC."""
    raw = request.GET.get("wait")
    if raw is None or raw.strip() == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= WAIT_MAX_SEC:  # also refuses nan and inf
        raise ValidationFailed(
            f"wait must be a number of seconds from 0 to {WAIT_MAX_SEC:g}.",
            details={"wait": [f"A number from 0 to {WAIT_MAX_SEC:g}."]},
        )
    return value


# Served through `apis_live.job_detail`, which does the waiting of `?wait=` without a thread.
class JobDetailApi(APIView):
    @extend_schema(
        operation_id="agent_jobs_retrieve",
        summary="Poll a job, or wait for it to end",
        parameters=[
            OpenApiParameter(
                "wait",
                OpenApiTypes.NUMBER,
                description=(
                    f"Seconds (0 to {WAIT_MAX_SEC:g}) to wait for the job to end before answering: the "
                    "answer comes as soon as the job is terminal, or with its current state when the "
                    "wait ends."
                ),
            )
        ],
        responses={200: JobSerializer, **ERRORS},
    )
    def get(self, request, job_id):
        wait_seconds(request)
        job = selectors.job_get(user=request.user, job_id=job_id)
        headers = {} if job.is_terminal else {"Retry-After": str(POLL_AFTER_SEC)}
        return Response(output(JobSerializer, job_payload(job, request)), headers=headers)


class JobCancelApi(APIView):
    @extend_schema(
        operation_id="agent_jobs_cancel",
        summary="Cancel a job",
        request=None,
        responses={
            202: JobSerializer,
            **ERRORS,
            409: OpenApiResponse(ErrorResponseSerializer, description="The job already ended."),
        },
    )
    def post(self, request, job_id):
        job = selectors.job_get(user=request.user, job_id=job_id)
        job = job_services.job_cancel(job=job)
        return Response(output(JobSerializer, job_payload(job, request)), status=status.HTTP_202_ACCEPTED)


class AgentSyncApi(APIView):
    throttle_classes = [JobCreateThrottle]

    @extend_schema(
        operation_id="agent_run_sync",
        summary="Ask the agent and wait for the answer (same pipeline, within the request)",
        request=AgentQuerySerializer,
        parameters=[BYO_PARAM],
        responses={200: AgentResponseSerializer, **ERRORS},
    )
    def post(self, request):
        data = AgentQuerySerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result, decision = job_services.agent_run_sync(
            query=data.validated_data["query"],
            options=_options(data.validated_data),
            byo_api_key=_byo_key(request),
        )
        body = {**result.to_dict(), "cost": decision.to_dict()}
        return Response(AgentResponseSerializer(body).data)


class PingApi(APIView):
    """The cheapest request the API serves: no authentication, no database, no cache.

    A liveness probe (is this process answering?) and the baseline of the polling benchmark (bench/polling.py):
    `GET /api/agent/jobs/<id>` is measured against it in the same server.
    """

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="ping",
        summary="Is this API process answering? (no I/O)",
        responses={200: OpenApiResponse(description='Always `{"ok": true}`.')},
    )
    def get(self, request):
        return Response({"ok": True})


class HealthApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="health",
        summary="Can the service accept and run jobs?",
        responses={200: HealthSerializer, 503: HealthSerializer},
    )
    def get(self, request):
        ready, report = health_check()
        return Response(report, status=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE)


# --- batches --------------------------------------------------------------------------------------


BATCH_ERRORS = {
    **ERRORS,
    404: OpenApiResponse(ErrorResponseSerializer, description="No such batch for this user."),
}


def batch_links(batch_id) -> dict:
    return {
        "detail": reverse("agent-batch-detail", args=[batch_id]),
        "cancel": reverse("agent-batch-cancel", args=[batch_id]),
        "report_csv": reverse("agent-batch-report", args=[batch_id]) + "?format=csv",
        "report_html": reverse("agent-batch-report", args=[batch_id]) + "?format=html",
    }


def batch_summary_payload(batch: Batch, progress: dict) -> dict:
    """The short view of a batch, as documented by `BatchSummarySerializer`."""
    return {
        "id": batch.id,
        "status": batch.status,
        "source": batch.source,
        "size": batch.size,
        "created_at": batch.created_at,
        "completed_at": batch.completed_at,
        "cancelled_at": batch.cancelled_at,
        "progress": progress,
        "links": batch_links(batch.id),
    }


def batch_payload(batch: Batch) -> dict:
    """The full view of a batch, as documented by `BatchSerializer`."""
    view = selectors.batch_view(batch=batch)
    return {
        **batch_summary_payload(batch, view["progress"]),
        "selection": batch.selection,
        "overrides": batch.overrides,
        "webhook_url": batch.webhook_url,
        "totals": view["totals"],
        "comparison": view["comparison"],
        "parents_purged": view["parents_purged"],
        "items": view["items"],
    }


def _job_filter(data: dict | None) -> batch_services.JobFilter | None:
    if data is None:
        return None
    return batch_services.JobFilter(
        status=data.get("status"),
        created_after=data.get("created_after"),
        created_before=data.get("created_before"),
        degraded_only=data.get("degraded_only", False),
    )


class BatchListCreateApi(APIView):
    pagination_class = Pagination  # also read by the schema generator: the list is paginated

    def get_throttles(self):
        return [BatchCreateThrottle()] if self.request.method == "POST" else []

    @extend_schema(
        operation_id="agent_batches_create",
        summary="Run many jobs at once: new queries, or re-runs of your past jobs with overrides",
        description=(
            "Give exactly one of `queries`, `jobs` (ids) or `filter`. Each item becomes an ordinary "
            "job (pollable at /api/agent/jobs/<id>) with `batch_id` and, for re-runs, `parent_id` set. "
            "Batch jobs run at a lower priority than interactive jobs. At most AGENT_BATCH_MAX_SIZE "
            "jobs (400 `batch_too_large`); an empty selection is 400 `batch_empty`; ids that are not "
            "yours are 400 `jobs_not_found` (listed in details.missing)."
        ),
        request=BatchCreateInputSerializer,
        parameters=[IDEMPOTENCY_PARAM],
        responses={
            202: BatchSerializer,
            **BATCH_ERRORS,
            422: OpenApiResponse(
                ErrorResponseSerializer, description="Idempotency-Key reused with another body."
            ),
            429: OpenApiResponse(ErrorResponseSerializer, description="Throttled (scope batch_create)."),
        },
        examples=[
            OpenApiExample(
                "Re-run degraded jobs on another model",
                value={
                    "filter": {"degraded_only": True, "created_after": "2026-11-01T00:00:00Z"},
                    "overrides": {"model": "gpt-4o-mini", "top_k": 5},
                },
                request_only=True,
            ),
            OpenApiExample(
                "New queries", value={"queries": ["whales", "dragons for children"]}, request_only=True
            ),
        ],
    )
    def post(self, request):
        data = BatchCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        webhook_url = _validate_webhook_url(values.get("webhook_url", ""))
        batch, _created = batch_services.batch_create(
            owner=request.user,
            queries=values.get("queries"),
            job_ids=values.get("jobs"),
            job_filter=_job_filter(values.get("filter")),
            overrides=values.get("overrides"),
            webhook_url=webhook_url,
            idempotency_key=_idempotency_key(request),
        )
        location = reverse("agent-batch-detail", args=[batch.id])
        return Response(
            BatchSerializer(batch_payload(batch)).data,
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": location, "Retry-After": str(POLL_AFTER_SEC)},
        )

    @extend_schema(
        operation_id="agent_batches_list",
        summary="List your batches, newest first",
        responses={200: BatchSummarySerializer(many=True), **ERRORS},
    )
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(selectors.batch_list(user=request.user), request, view=self)
        progress = selectors.batch_progress_many(batch_ids=[batch.id for batch in page])
        rows = [batch_summary_payload(batch, progress[batch.id]) for batch in page]
        return paginator.get_paginated_response(BatchSummarySerializer(rows, many=True).data)


class BatchDetailApi(APIView):
    @extend_schema(
        operation_id="agent_batches_retrieve",
        summary="Progress, totals, items and (when complete) the comparison with the original jobs",
        responses={200: BatchSerializer, **BATCH_ERRORS},
    )
    def get(self, request, batch_id):
        batch = selectors.batch_get(user=request.user, batch_id=batch_id)
        headers = {} if batch.completed_at else {"Retry-After": str(POLL_AFTER_SEC)}
        return Response(BatchSerializer(batch_payload(batch)).data, headers=headers)


class BatchCancelApi(APIView):
    @extend_schema(
        operation_id="agent_batches_cancel",
        summary="Cancel what has not finished (queued jobs now, running jobs at their next step)",
        request=None,
        responses={
            202: BatchSerializer,
            **BATCH_ERRORS,
            409: OpenApiResponse(ErrorResponseSerializer, description="The batch already completed."),
        },
    )
    def post(self, request, batch_id):
        batch = selectors.batch_get(user=request.user, batch_id=batch_id)
        batch = batch_services.batch_cancel(batch=batch)
        return Response(BatchSerializer(batch_payload(batch)).data, status=status.HTTP_202_ACCEPTED)


class BatchReportApi(APIView):
    """CSV or HTML; errors stay JSON in the one error shape."""

    renderer_classes = [CSVRenderer, HTMLRenderer]

    def perform_content_negotiation(self, request, force=False):
        try:
            return super().perform_content_negotiation(request, force=force)
        except Http404:  # DRF's answer to an unknown ?format=
            raise ValidationFailed(
                "format must be csv or html.", code="invalid_format", details={"format": ["csv", "html"]}
            ) from None

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if response.status_code >= 400:
            response.accepted_renderer = JSONRenderer()
            response.accepted_media_type = JSONRenderer.media_type
        return response

    @extend_schema(
        operation_id="agent_batches_report",
        summary="The batch as CSV (one row per item) or as an HTML page with latency and cost charts",
        parameters=[
            OpenApiParameter(
                "format",
                OpenApiTypes.STR,
                enum=["csv", "html"],
                description="csv (default) or html; the Accept header works too.",
            )
        ],
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="One row per item."),
            (200, "text/html"): OpenApiResponse(OpenApiTypes.STR, description="A self-contained page."),
            (400, "application/json"): ERRORS[400],
            (401, "application/json"): ERRORS[401],
            (404, "application/json"): BATCH_ERRORS[404],
        },
    )
    def get(self, request, batch_id):
        batch = selectors.batch_get(user=request.user, batch_id=batch_id)
        view = selectors.batch_view(batch=batch)
        if request.accepted_renderer.format == "html":
            # The page shows users' text: even if escaping failed somewhere, nothing could run or load.
            csp = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'"
            return Response(
                reports.report_html(batch=batch, view=view), headers={"Content-Security-Policy": csp}
            )
        filename = f"batch-{batch.id}.csv"
        return Response(
            reports.report_csv(view=view),
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
