"""Output shapes of the webhooks API (documentation and rendering; no business rules here).

Errors use the one shape documented by `apps.core.serializers.ErrorResponseSerializer`.
"""

from __future__ import annotations

from rest_framework import serializers

from .models import AttemptOutcome, DeliveryStatus, EventType


class SecretCreatedSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text="whsec_… — shown only in this response; store it now.")
    prefix = serializers.CharField(help_text='The recognisable start, e.g. "whsec_ab12…".')
    created_at = serializers.DateTimeField()
    rotated_at = serializers.DateTimeField(allow_null=True)
    previous_valid_until = serializers.DateTimeField(
        allow_null=True,
        help_text="Until then deliveries carry a second signature made with the previous secret.",
    )


class SecretMetadataSerializer(serializers.Serializer):
    prefix = serializers.CharField()
    created_at = serializers.DateTimeField()
    rotated_at = serializers.DateTimeField(allow_null=True)
    previous_prefix = serializers.CharField(allow_null=True)
    previous_valid_until = serializers.DateTimeField(allow_null=True)


class DeliveryAttemptStateSerializer(serializers.Serializer):
    series = serializers.IntegerField()
    number = serializers.IntegerField()
    at = serializers.DateTimeField()
    status_code = serializers.IntegerField(allow_null=True)
    duration_ms = serializers.FloatField()
    outcome = serializers.ChoiceField(choices=AttemptOutcome.choices)
    error = serializers.CharField(allow_blank=True)
    response_excerpt = serializers.CharField(allow_blank=True)


class DeliveryStateSerializer(serializers.Serializer):
    """`selectors.delivery_state_for_job()`; the job detail embeds it as "webhook"."""

    webhook_id = serializers.CharField(help_text="The webhook-id header of every attempt of this event.")
    event_type = serializers.ChoiceField(choices=EventType.choices)
    url = serializers.CharField()
    status = serializers.ChoiceField(choices=DeliveryStatus.choices)
    attempts = serializers.IntegerField(help_text="Attempts of the current series.")
    series = serializers.IntegerField(help_text="1, plus one per redelivery.")
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True)
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    attempt_log = DeliveryAttemptStateSerializer(many=True)
