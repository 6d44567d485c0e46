"""Batch endpoints: create and list, read, cancel, and the comparison report."""

from __future__ import annotations

from django.http import Http404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.agent import reports, selectors
from apps.agent.apis.common import (
    BUDGET_EXCEEDED_EXAMPLE,
    ERRORS,
    IDEMPOTENCY_PARAM,
    POLL_AFTER_SEC,
    TOO_LARGE,
    idempotency_key_from,
    webhook_url_from,
)
from apps.agent.models import Batch
from apps.agent.pagination import Pagination
from apps.agent.reports import CSVRenderer, HTMLRenderer
from apps.agent.serializers import BatchCreateInputSerializer, BatchSerializer, BatchSummarySerializer
from apps.agent.services import batches as batch_services
from apps.agent.throttling import BatchCreateThrottle
from apps.core.renderers import JSONRenderer
from apps.core.serializers import ErrorResponseSerializer
from core.errors import ValidationFailed

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
        "estimated_cost_usd": None if batch.estimated_cost_usd is None else float(batch.estimated_cost_usd),
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
            **TOO_LARGE,
            429: OpenApiResponse(
                ErrorResponseSerializer,
                description=(
                    "Throttled (`throttled`, scope batch_create), or `budget_exceeded`: the batch's "
                    "worst-case cost does not fit in what is left of a budget (docs/costs.md)."
                ),
                examples=[BUDGET_EXCEEDED_EXAMPLE],
            ),
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
        webhook_url = webhook_url_from(values.get("webhook_url", ""))
        batch, _created = batch_services.batch_create(
            owner=request.user,
            queries=values.get("queries"),
            job_ids=values.get("jobs"),
            job_filter=_job_filter(values.get("filter")),
            overrides=values.get("overrides"),
            webhook_url=webhook_url,
            idempotency_key=idempotency_key_from(request),
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
        if not force and request.query_params.get("format", "csv") not in ("csv", "html"):
            # DRF takes an empty `format=` for no format at all (and answers CSV); the schema's enum says no.
            raise ValidationFailed(
                "format must be csv or html.", code="invalid_format", details={"format": ["csv", "html"]}
            )
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
