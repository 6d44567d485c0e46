"""Input and output serializers of the agent API. Validation only: no business rules, no save().

Longer than ~400 lines on purpose: the OpenAPI schema is generated from these classes, so every field of
the job, batch, usage and event payloads is declared here once, with its help text."""

from __future__ import annotations

import re
from datetime import datetime

from django.conf import settings
from drf_spectacular.extensions import OpenApiSerializerExtension
from rest_framework import serializers
from rest_framework_dataclasses.serializers import DataclassSerializer

from agent import types
from agent.language import LANGUAGES
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


class StrictSerializerSchema(OpenApiSerializerExtension):
    """Documents the strictness: request bodies of `StrictSerializer`s have `additionalProperties: false`."""

    target_class = StrictSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_basic_serializer(self.target, direction)
        if direction == "request":
            schema["additionalProperties"] = False
        return schema


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
    language = serializers.ChoiceField(
        choices=LANGUAGES,
        required=False,
        help_text="The language of the answer. Without it: the Accept-Language header's, else the question's.",
    )

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


class TimestampField(serializers.DateTimeField):
    """A timestamp rendered as every other one in the API (ISO 8601, UTC, "Z"), whether it comes as a
    datetime (a stored trace step) or as the pipeline's ISO string (the synchronous endpoint)."""

    def to_representation(self, value):
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return super().to_representation(value)


# A trace step: the fields of `agent.types.TraceStep` (derived, not retyped: the one definition of the
# shape), all present in every step, plus the attempt that ran it (stored steps only).
class TraceStepSerializer(DataclassSerializer):
    attempt = serializers.IntegerField(required=False)
    # The dataclass carries an ISO string; rendered like every other timestamp of the API.
    started_at = TimestampField()

    class Meta:
        dataclass = types.TraceStep
        fields = ["name", "attempt", *types.TRACE_STEP_FIELDS[1:]]
        extra_kwargs = {name: {"required": True} for name in types.TRACE_STEP_FIELDS if name != "started_at"}


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


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "unavailable"])
    failing = serializers.ListField(child=serializers.CharField())
    checks = serializers.DictField()


# --- batches --------------------------------------------------------------------------------------

FINISHED_STATUSES = ["succeeded", "failed", "cancelled"]
BATCH_STATUSES = ["running", "cancelling", "completed", "cancelled"]


class BatchOverridesSerializer(StrictSerializer):
    model = serializers.CharField(
        required=False, max_length=200, help_text="LLM model name for every job of the batch."
    )
    cost_mode = serializers.ChoiceField(
        choices=["paid", "hybrid", "byo_key"],
        required=False,
        help_text="paid or hybrid (both use the server key); byo_key is refused for batches.",
    )
    top_k = serializers.IntegerField(required=False, min_value=1, max_value=MAX_TOP_K)
    filters = FiltersSerializer(required=False, help_text="Replaces each job's filters as a whole.")
    vector_store_build = serializers.RegexField(
        r"^[A-Za-z0-9_.:-]{1,64}$",
        required=False,
        help_text="The `build_id` of the vector store the batch must run on. It must be the deployed "
        "build (GET /api/health shows it); any other build is refused with 400.",
    )


class BatchJobFilterSerializer(StrictSerializer):
    status = serializers.ChoiceField(choices=FINISHED_STATUSES, required=False)
    created_after = serializers.DateTimeField(required=False, help_text="Inclusive.")
    created_before = serializers.DateTimeField(required=False, help_text="Exclusive.")
    degraded_only = serializers.BooleanField(required=False, default=False)

    def validate(self, attrs):
        after, before = attrs.get("created_after"), attrs.get("created_before")
        if after and before and after >= before:
            raise serializers.ValidationError({"created_before": ["Must be later than created_after."]})
        return attrs


class BatchCreateInputSerializer(StrictSerializer):
    """Exactly one of `queries`, `jobs` (ids of your past jobs) or `filter` (over your past jobs)."""

    queries = serializers.ListField(
        child=QueryField(), required=False, allow_empty=True, help_text="New questions, one job each."
    )
    jobs = serializers.ListField(
        child=serializers.UUIDField(),
        required=False,
        allow_empty=True,
        help_text="Ids of your finished jobs to re-run (repeats count once).",
    )
    filter = BatchJobFilterSerializer(
        required=False, help_text="Re-run your finished jobs that match (oldest first)."
    )
    overrides = BatchOverridesSerializer(required=False)
    webhook_url = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=2000,
        help_text="Receives one signed agent.batch.completed event when the batch ends.",
    )

    def validate(self, attrs):
        given = [name for name in ("queries", "jobs", "filter") if name in attrs]
        if len(given) != 1:
            raise serializers.ValidationError(
                {"selection": [f"Give exactly one of queries, jobs or filter (got {given or 'none'})."]}
            )
        return attrs


class BatchProgressSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    queued = serializers.IntegerField()
    running = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    cancelled = serializers.IntegerField()
    finished = serializers.IntegerField()
    percent = serializers.FloatField()


class LatencyStatsSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    p50 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)
    max = serializers.FloatField(allow_null=True)


class BatchTotalsSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost_usd = serializers.FloatField()
    latency_ms = LatencyStatsSerializer()


class RankChangeSerializer(serializers.Serializer):
    id = serializers.CharField()
    parent_rank = serializers.IntegerField()
    rank = serializers.IntegerField()


class ItemComparisonSerializer(serializers.Serializer):
    compared = serializers.BooleanField(help_text="Both jobs succeeded, so their results are compared.")
    parent_status = serializers.CharField()
    parent_result_ids = serializers.ListField(child=serializers.CharField())
    jaccard = serializers.FloatField(allow_null=True, help_text="|A∩B| / |A∪B| of the result ids.")
    results_changed = serializers.BooleanField(allow_null=True, help_text="Ids or their order differ.")
    order_changed = serializers.BooleanField(allow_null=True, help_text="Same ids, another order.")
    added_ids = serializers.ListField(child=serializers.CharField(), allow_null=True)
    removed_ids = serializers.ListField(child=serializers.CharField(), allow_null=True)
    rank_changes = RankChangeSerializer(many=True, allow_null=True)
    parent_degraded = serializers.BooleanField()
    degraded_change = serializers.ChoiceField(
        choices=["unchanged", "became_degraded", "recovered"], allow_null=True
    )
    parent_latency_ms = serializers.FloatField(allow_null=True)
    latency_delta_ms = serializers.FloatField(allow_null=True, help_text="Re-run minus parent.")
    parent_cost_usd = serializers.FloatField()
    cost_delta_usd = serializers.FloatField(help_text="Re-run minus parent.")
    parent_model = serializers.CharField(allow_blank=True)
    store_changed = serializers.BooleanField(
        allow_null=True,
        help_text=(
            "The vector store build differs from the parent's; null when either build is unknown "
            "(a job that never ran: cancelled while queued)."
        ),
    )


class BatchItemSerializer(serializers.Serializer):
    position = serializers.IntegerField()
    job_id = serializers.UUIDField()
    parent_id = serializers.UUIDField(allow_null=True)
    parent_purged = serializers.BooleanField(
        help_text="A re-run whose original job was purged (AGENT_JOB_RETENTION_DAYS): nothing to compare."
    )
    query = serializers.CharField()
    status = serializers.CharField()
    degraded = serializers.BooleanField()
    result_ids = serializers.ListField(child=serializers.CharField())
    latency_ms = serializers.FloatField(allow_null=True)
    cost_usd = serializers.FloatField()
    model = serializers.CharField(allow_blank=True)
    comparison = ItemComparisonSerializer(allow_null=True)


class DegradedChangesSerializer(serializers.Serializer):
    became_degraded = serializers.IntegerField()
    recovered = serializers.IntegerField()
    unchanged = serializers.IntegerField()


class LatencyComparisonSerializer(serializers.Serializer):
    parent_p50 = serializers.FloatField(allow_null=True)
    rerun_p50 = serializers.FloatField(allow_null=True)
    parent_p95 = serializers.FloatField(allow_null=True)
    rerun_p95 = serializers.FloatField(allow_null=True)
    mean_delta = serializers.FloatField(allow_null=True)


class CostComparisonSerializer(serializers.Serializer):
    parent_total = serializers.FloatField()
    rerun_total = serializers.FloatField()
    delta = serializers.FloatField()


class ComparisonSummarySerializer(serializers.Serializer):
    items = serializers.IntegerField()
    compared = serializers.IntegerField()
    not_compared = serializers.IntegerField()
    identical = serializers.IntegerField()
    reordered = serializers.IntegerField()
    changed = serializers.IntegerField()
    mean_jaccard = serializers.FloatField(allow_null=True)
    min_jaccard = serializers.FloatField(allow_null=True)
    degraded = DegradedChangesSerializer()
    latency_ms = LatencyComparisonSerializer()
    cost_usd = CostComparisonSerializer()
    store_changed = serializers.IntegerField()


class BatchLinksSerializer(serializers.Serializer):
    detail = serializers.CharField()
    cancel = serializers.CharField()
    report_csv = serializers.CharField()
    report_html = serializers.CharField()


class BatchSummarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=BATCH_STATUSES)
    source = serializers.ChoiceField(choices=["queries", "jobs"])
    size = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)
    cancelled_at = serializers.DateTimeField(allow_null=True)
    progress = BatchProgressSerializer()
    links = BatchLinksSerializer()


class BatchSerializer(BatchSummarySerializer):
    estimated_cost_usd = serializers.FloatField(
        allow_null=True,
        help_text="Worst case of the batch's calls paid with the server key, estimated at creation (every "
        "prompt at its largest, LLM_MAX_TOKENS out); null when the server key does not pay or the model "
        "has no price. A batch that does not fit in a budget is refused (429 budget_exceeded).",
    )
    selection = serializers.DictField()
    overrides = serializers.DictField()
    webhook_url = serializers.CharField(allow_blank=True)
    totals = BatchTotalsSerializer()
    comparison = ComparisonSummarySerializer(
        allow_null=True, help_text="Once the batch is complete, for re-runs of past jobs."
    )
    parents_purged = serializers.IntegerField(
        help_text="Items whose original job was purged since (retention); they are not compared."
    )
    items = BatchItemSerializer(many=True)


class SpendModelSerializer(serializers.Serializer):
    model = serializers.CharField()
    spent_usd = serializers.FloatField()
    reserved_usd = serializers.FloatField(help_text="Held by calls in flight (their worst case).")
    calls = serializers.IntegerField(help_text="Paid calls settled in the period.")


class SpendPeriodSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    resets_at = serializers.DateTimeField()
    limit_usd = serializers.FloatField(allow_null=True, help_text="Your cap; null: unlimited.")
    spent_usd = serializers.FloatField()
    reserved_usd = serializers.FloatField()
    remaining_usd = serializers.FloatField(allow_null=True)
    tracked = serializers.BooleanField(
        help_text="True: read from the spending ledger that enforces the caps; false: no cap applies, "
        "spend summed from your jobs (reservations are not tracked)."
    )
    by_model = SpendModelSerializer(many=True)


class SpendUserSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()


class SpendPeriodsSerializer(serializers.Serializer):
    day = SpendPeriodSerializer()
    month = SpendPeriodSerializer()


class FairShareSerializer(serializers.Serializer):
    max_running = serializers.IntegerField(
        allow_null=True,
        help_text="Most of your jobs (batch jobs apart) in flight at once; null: unlimited (docs/limits.md).",
    )
    max_running_batch = serializers.IntegerField(
        allow_null=True, help_text="Most of your batch jobs in flight at once; null: unlimited."
    )


class SpendSerializer(serializers.Serializer):
    user = SpendUserSerializer()
    periods = SpendPeriodsSerializer()
    fair_share = FairShareSerializer(
        help_text="Your effective fair-share caps: an operator's override of yours, else the defaults."
    )


class SpendRowSerializer(serializers.Serializer):
    user = SpendUserSerializer()
    day_spent_usd = serializers.FloatField()
    month_spent_usd = serializers.FloatField()
    month_calls = serializers.IntegerField()
    day_limit_usd = serializers.FloatField(allow_null=True)
    month_limit_usd = serializers.FloatField(allow_null=True)
