"""Job endpoints: submit and list, read, cancel, redeliver the webhook event; the synchronous run."""

from __future__ import annotations

import re
import uuid

from django.conf import settings
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.agent import selectors
from apps.agent.apis.common import (
    ACCEPT_LANGUAGE_PARAM,
    BYO_PARAM,
    ERRORS,
    IDEMPOTENCY_PARAM,
    LIMIT_429,
    POLL_AFTER_SEC,
    TOO_LARGE,
    UNAUTHENTICATED_RESPONSE,
    byo_key_from,
    idempotency_key_from,
    options_from,
    output,
    webhook_url_from,
)
from apps.agent.models import AgentJob
from apps.agent.pagination import Pagination
from apps.agent.serializers import (
    AgentQuerySerializer,
    AgentResponseSerializer,
    JobAcceptedSerializer,
    JobCreateInputSerializer,
    JobSerializer,
    JobSummarySerializer,
)
from apps.agent.services import events as event_services
from apps.agent.services import job_events
from apps.agent.services import jobs as job_services
from apps.agent.throttling import JobCreateThrottle
from apps.core.serializers import ErrorResponseSerializer
from apps.webhooks.selectors import delivery_state_for_job
from apps.webhooks.serializers import DeliveryStateSerializer
from core.caches import LRU
from core.errors import ValidationFailed


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
        parameters=[BYO_PARAM, IDEMPOTENCY_PARAM, ACCEPT_LANGUAGE_PARAM],
        responses={
            202: JobAcceptedSerializer,
            **ERRORS,
            422: OpenApiResponse(
                ErrorResponseSerializer, description="Idempotency-Key reused with another body."
            ),
            **TOO_LARGE,
            429: LIMIT_429,
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
        webhook_url = webhook_url_from(data.validated_data.get("webhook_url", ""))
        job, created = job_services.job_create(
            owner=request.user,
            query=data.validated_data["query"],
            options=options_from(data.validated_data, request),
            webhook_url=webhook_url,
            idempotency_key=idempotency_key_from(request),
            byo_api_key=byo_key_from(request),
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


_DECIMAL = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", re.ASCII)


def wait_seconds(request) -> float:
    """The `wait` query parameter in seconds (0 when absent). Raises `ValidationFailed` when it is not a
    number from 0 to WAIT_MAX_SEC."""
    raw = request.GET.get("wait")
    if raw is None or raw.strip() == "":
        return 0.0
    # A plain decimal number: Python's float() also reads "1_0" as 10 and other scripts' digits.
    value = float(raw) if _DECIMAL.fullmatch(raw.strip()) else -1.0
    if not 0 <= value <= WAIT_MAX_SEC:
        raise ValidationFailed(
            f"wait must be a number of seconds from 0 to {WAIT_MAX_SEC:g}.",
            details={"wait": [f"A number from 0 to {WAIT_MAX_SEC:g}."]},
        )
    return value


class FinishedViews:
    """What GET /api/agent/jobs/<id> answered for finished jobs, remembered per API process.

    A finished job no longer changes, and pollers read it again and again (a client that polls until the
    end reads it at least once more; dashboards, the console's list). Its view costs two queries and the
    serialisation (~1.7 ms in-process, against ~0.2 ms for the whole of a trivial request); a remembered
    one none (docs/benchmarks.md, "Polling"). Kept `API_JOB_CACHE_SEC` seconds (0: off) for at most
    `MAX_VIEWS` jobs. Not remembered: a job with a webhook (its delivery state changes after the end, and
    it is read fresh). A finished job deleted (retention, the admin) may still be served by a process for
    those seconds, and so may a re-run's `parent_id` once its parent was deleted (SET_NULL). Another
    user's request is not answered from here: it takes the database path of any GET and gets the 404 of a
    job that does not exist, after the same query (an answer from memory would be faster than that 404,
    telling a remembered job's id from an unknown one by its timing).
    """

    MAX_VIEWS = 1000

    def __init__(self) -> None:
        self._views = LRU(self.MAX_VIEWS)  # job id -> (owner id, data), for API_JOB_CACHE_SEC

    def get(self, user, job_id: uuid.UUID) -> dict | None:
        entry = self._views.get(job_id)
        if entry is None or entry[0] != user.pk:
            return None
        return entry[1]

    def put(self, job: AgentJob, data: dict) -> None:
        ttl = float(getattr(settings, "API_JOB_CACHE_SEC", 0))
        if ttl > 0 and not job.webhook_url:
            self._views.put(job.id, (job.owner_id, data), ttl=ttl)

    def clear(self) -> None:
        self._views.clear()


finished_views = FinishedViews()


# Served through `apis.live.job_detail`, which does the waiting of `?wait=` without a thread.
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
        data = finished_views.get(request.user, job_id)
        if data is not None:
            return Response(data)
        job = selectors.job_get(user=request.user, job_id=job_id)
        data = output(JobSerializer, job_payload(job, request))
        if job.is_terminal:
            finished_views.put(job, data)
            return Response(data)
        return Response(data, headers={"Retry-After": str(POLL_AFTER_SEC)})


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
        parameters=[BYO_PARAM, ACCEPT_LANGUAGE_PARAM],
        responses={200: AgentResponseSerializer, **ERRORS, **TOO_LARGE, 429: LIMIT_429},
    )
    def post(self, request):
        data = AgentQuerySerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result, decision = job_services.agent_run_sync(
            query=data.validated_data["query"],
            options=options_from(data.validated_data, request),
            byo_api_key=byo_key_from(request),
            owner=request.user,
        )
        body = {**result.to_dict(), "cost": decision.to_dict()}
        return Response(AgentResponseSerializer(body).data)


class JobRedeliverApi(APIView):
    @extend_schema(
        operation_id="agent_job_redeliver",
        summary="Send a finished job's webhook event again",
        description=(
            "Starts a new series of attempts for the job's event, with the same `webhook-id`, and lifts a "
            "410 block on its URL. Only the job's owner may do this."
        ),
        tags=["webhooks"],
        request=None,
        responses={
            202: DeliveryStateSerializer,
            401: UNAUTHENTICATED_RESPONSE,
            404: OpenApiResponse(ErrorResponseSerializer, description="No such job of yours."),
            409: OpenApiResponse(
                ErrorResponseSerializer, description="The job is not finished, or it has no webhook_url."
            ),
        },
    )
    def post(self, request: Request, job_id: uuid.UUID) -> Response:
        job = selectors.job_get(user=request.user, job_id=job_id)
        event_services.job_event_redeliver(job=job)
        return Response(
            DeliveryStateSerializer(delivery_state_for_job(job=job)).data, status=status.HTTP_202_ACCEPTED
        )
