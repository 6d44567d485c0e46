"""Liveness and readiness: `GET /api/ping` (no I/O) and `GET /api/health` (the parts a job needs)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.agent.serializers import HealthSerializer
from apps.agent.services.health import health_check


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
