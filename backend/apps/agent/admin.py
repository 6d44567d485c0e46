import json

from django.contrib import admin
from django.utils.html import format_html, format_html_join

from .models import AgentJob, Batch, TraceStep


class TraceStepInline(admin.TabularInline):
    model = TraceStep
    extra = 0
    can_delete = False
    fields = (
        "attempt",
        "position",
        "name",
        "duration_ms",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "summary",
        "error",
    )
    readonly_fields = fields

    @admin.display(description="inputs → outputs")
    def summary(self, step: TraceStep) -> str:
        return format_html(
            "<code>{}</code> → <code>{}</code>",
            json.dumps(step.inputs, ensure_ascii=False)[:300],
            json.dumps(step.outputs, ensure_ascii=False)[:300],
        )

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AgentJob)
class AgentJobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "owner",
        "status",
        "degraded",
        "attempts",
        "provider",
        "model",
        "created_at",
        "latency_ms",
    )
    list_filter = ("status", "degraded", "owner", "provider", "cost_mode")
    search_fields = ("id", "query", "owner__username")
    readonly_fields = [f.name for f in AgentJob._meta.fields] + ["answer"]
    inlines = [TraceStepInline]
    date_hierarchy = "created_at"

    @admin.display(description="Answer")
    def answer(self, job: AgentJob) -> str:
        result = job.result or {}
        rows = format_html_join(
            "",
            "<li>{} — {} ({}), score {}</li>",
            ((r["title"], r["author"], r["year"], r["score"]) for r in result.get("results", [])),
        )
        return format_html("<p>{}</p><ol>{}</ol>", result.get("message", ""), rows)

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "source", "size", "status", "created_at", "completed_at", "cancelled_at")
    list_filter = ("source", "owner")
    readonly_fields = [f.name for f in Batch._meta.fields]
