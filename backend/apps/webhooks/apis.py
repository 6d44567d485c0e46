"""HTTP endpoints of the webhooks app: the signing secret (redelivery of a job's event is a job endpoint,
`apps.agent.apis.JobRedeliverApi`)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.serializers import ErrorResponseSerializer
from core.errors import NotFound

from .selectors import secret_metadata
from .serializers import SecretCreatedSerializer, SecretMetadataSerializer
from .services import secret_create_or_rotate

_UNAUTHENTICATED = OpenApiResponse(ErrorResponseSerializer, description="Not authenticated.")
# The secret must not linger in a browser or proxy cache.
_NO_STORE = {"Cache-Control": "no-store"}


class WebhookSecretApi(APIView):
    @extend_schema(
        operation_id="webhook_secret_retrieve",
        summary="Metadata of your webhook signing secret (never the secret itself)",
        tags=["webhooks"],
        responses={
            200: SecretMetadataSerializer,
            401: _UNAUTHENTICATED,
            404: OpenApiResponse(ErrorResponseSerializer, description="No secret yet: POST to create one."),
        },
    )
    def get(self, request: Request) -> Response:
        metadata = secret_metadata(user=request.user)
        if metadata is None:
            raise NotFound(
                "No webhook secret yet; POST /api/webhooks/secret creates one.", code="no_webhook_secret"
            )
        return Response(SecretMetadataSerializer(metadata).data)

    @extend_schema(
        operation_id="webhook_secret_create_or_rotate",
        summary="Create or rotate your webhook signing secret (shown once)",
        description=(
            "Returns the new `whsec_` secret once. On rotation the previous secret keeps signing (a second "
            "signature in `webhook-signature`) until `previous_valid_until`."
        ),
        tags=["webhooks"],
        request=None,
        responses={201: SecretCreatedSerializer, 401: _UNAUTHENTICATED},
    )
    def post(self, request: Request) -> Response:
        plaintext, row = secret_create_or_rotate(user=request.user)
        body = {
            "secret": plaintext,
            "prefix": f"{row.prefix}…",
            "created_at": row.created_at,
            "rotated_at": row.rotated_at,
            "previous_valid_until": row.previous_valid_until,
        }
        return Response(SecretCreatedSerializer(body).data, status=status.HTTP_201_CREATED, headers=_NO_STORE)
