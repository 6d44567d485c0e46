"""Spending budgets seen from the API: what a user spent and holds reserved (with their fair-share caps), and
(staff) everyone's spend."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.agent.apis.common import ERRORS
from apps.agent.serializers import SpendRowSerializer, SpendSerializer
from apps.agent.services import budgets as budget_services
from apps.agent.services import fairness
from apps.core.serializers import ErrorResponseSerializer
from core.errors import NotFound


class UsageApi(APIView):
    @extend_schema(
        operation_id="agent_usage_retrieve",
        summary="What you spent and hold reserved this day and month, per model, against your budgets",
        description=(
            "Only calls paid with the server's key count (docs/costs.md). Periods are UTC days and months. "
            "`fair_share` gives your caps on jobs in flight (docs/limits.md). "
            "Staff may pass `?user=<username>` to see another user's."
        ),
        parameters=[OpenApiParameter("user", OpenApiTypes.STR, description="Staff only: a username.")],
        responses={200: SpendSerializer, **ERRORS},
    )
    def get(self, request):
        user = request.user
        username = request.query_params.get("user")
        if username is not None and username != user.get_username():
            # For anyone but staff another user is exactly an unknown one: no existence oracle.
            # A NUL cannot be in a username (nor in PostgreSQL's text: a DataError, not "no such user").
            known = user.is_staff and "\x00" not in username
            other = get_user_model().objects.filter(username=username).first() if known else None
            if other is None:
                raise NotFound("No such user.")
            user = other
        usage = budget_services.budget_usage_get(user=user)
        usage["fair_share"] = fairness.user_caps(owner_id=user.pk)
        return Response(SpendSerializer(usage).data)


class UsageListApi(APIView):
    permission_classes = [IsAdminUser]  # is_staff

    @extend_schema(
        operation_id="agent_usage_users_list",
        summary="Staff: every user's server-key spend this day and month, largest first",
        responses={
            200: SpendRowSerializer(many=True),
            **ERRORS,
            403: OpenApiResponse(ErrorResponseSerializer, description="Not staff."),
        },
    )
    def get(self, request):
        return Response(SpendRowSerializer(budget_services.budget_usage_list(), many=True).data)
