"""Input and output serializers of the agent API. Validation only: no business rules, no save()."""

from __future__ import annotations

import re

from django.conf import settings
from rest_framework import serializers

from agent.pipeline import MAX_QUERY_CHARS, MAX_TOP_K

# \Z, not $: "$" also matches before a trailing newline.
_SLUG = re.compile(r"^[a-z_]{1,32}\Z")
_LANG = re.compile(r"^[a-z]{2,3}\Z")


class StrictSerializer(serializers.Serializer):
    """Rejects fields it does not know, so that a typo never silently changes a job."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class FiltersSerializer(StrictSerializer):
    language = serializers.RegexField(
        _LANG, required=False, help_text="ISO 639-1 code of the original language."
    )
    genres = serializers.ListField(child=serializers.RegexField(_SLUG), required=False, max_length=10)
    year_min = serializers.IntegerField(required=False, min_value=-3000, max_value=3000)
    year_max = serializers.IntegerField(required=False, min_value=-3000, max_value=3000)

    def validate(self, attrs):
        if "year_min" in attrs and "year_max" in attrs and attrs["year_min"] > attrs["year_max"]:
            raise serializers.ValidationError({"year_max": ["Must not be smaller than year_min."]})
        return attrs


class QueryField(serializers.CharField):
    def __init__(self, **kwargs):
        super().__init__(max_length=MAX_QUERY_CHARS, trim_whitespace=True, allow_blank=False, **kwargs)

    def to_internal_value(self, data):
        if isinstance(data, str) and "\x00" in data:
            raise serializers.ValidationError("NUL characters are not allowed.")
        if not isinstance(data, str):
            raise serializers.ValidationError("Must be a string.")
        return super().to_internal_value(data)


class AgentQuerySerializer(StrictSerializer):
    query = QueryField(help_text="The question, 1..4000 characters after trimming.")
    top_k = serializers.IntegerField(required=False, min_value=1, max_value=MAX_TOP_K)
    filters = FiltersSerializer(required=False)

    def validate(self, attrs):
        attrs.setdefault("top_k", settings.AGENT_TOP_K_DEFAULT)
        attrs.setdefault("filters", {})
        return attrs


class JobCreateInputSerializer(AgentQuerySerializer):
    webhook_url = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=2000,
        help_text="Delivered a signed event when the job ends.",
    )


class JobAcceptedSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    poll_url = serializers.CharField()


class CostDecisionSerializer(serializers.Serializer):
    mode = serializers.CharField()
    key_source = serializers.CharField()
    provider = serializers.CharField()
    model = serializers.CharField()


class ResultItemSerializer(serializers.Serializer):
    id = serializers.CharField()
    title = serializers.CharField()
    author = serializers.CharField()
    year = serializers.IntegerField(allow_null=True)
    score = serializers.FloatField()
    why = serializers.CharField()
    cited = serializers.BooleanField()


class ActionSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["view_book", "refine_search"])
    label = serializers.CharField()
    book_id = serializers.CharField(required=False)
    filters = serializers.DictField(required=False)


class TraceStepSerializer(serializers.Serializer):
    name = serializers.CharField()
    attempt = serializers.IntegerField(required=False)
    started_at = serializers.CharField()
    duration_ms = serializers.FloatField()
    inputs = serializers.DictField()
    outputs = serializers.DictField()
    prompt_tokens = serializers.IntegerField(allow_null=True)
    completion_tokens = serializers.IntegerField(allow_null=True)
    cost_usd = serializers.FloatField(allow_null=True)
    error = serializers.DictField(allow_null=True)


class ErrorObjectSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class AgentResponseSerializer(serializers.Serializer):
    """The seed's response contract."""

    message = serializers.CharField(allow_blank=True)
    results = ResultItemSerializer(many=True)
    actions = ActionSerializer(many=True)
    trace = TraceStepSerializer(many=True)
    error = ErrorObjectSerializer(allow_null=True)
    degraded = serializers.BooleanField()
    cost = CostDecisionSerializer()


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    estimated = serializers.BooleanField()


class TimingsSerializer(serializers.Serializer):
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    queue_ms = serializers.FloatField(allow_null=True)
    run_ms = serializers.FloatField(allow_null=True)


class JobSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=["queued", "running", "succeeded", "failed", "cancelled"])
    query = serializers.CharField()
    options = serializers.DictField()
    degraded = serializers.BooleanField()
    message = serializers.CharField(allow_null=True)
    results = ResultItemSerializer(many=True)
    actions = ActionSerializer(many=True)
    trace = TraceStepSerializer(many=True)
    error = ErrorObjectSerializer(allow_null=True)
    attempts = serializers.IntegerField()
    cancel_requested = serializers.BooleanField()
    timings = TimingsSerializer()
    usage = UsageSerializer()
    cost_usd = serializers.FloatField()
    cost = CostDecisionSerializer()
    vector_store = serializers.DictField()
    parent_id = serializers.UUIDField(allow_null=True)
    batch_id = serializers.UUIDField(allow_null=True)
    webhook = serializers.DictField(allow_null=True)
    poll_url = serializers.CharField()


class JobSummarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    query = serializers.CharField()
    degraded = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    poll_url = serializers.CharField()


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.JSONField(allow_null=True)


class ErrorResponseSerializer(serializers.Serializer):
    """The one error shape of the API."""

    error = ErrorDetailSerializer()


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "unavailable"])
    failing = serializers.ListField(child=serializers.CharField())
    checks = serializers.DictField()
