import json
from datetime import UTC, datetime

from django.contrib import admin
from django.utils.html import format_html, format_html_join

from .models import AgentJob, Batch, SpendByUser, TraceStep, UserBudget, UserFairShare
from .services import spend
from .services.budgets import period_bounds, user_limits


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


@admin.register(UserBudget)
class UserBudgetAdmin(admin.ModelAdmin):
    """Per-user overrides of BUDGET_USER_DAILY_USD / BUDGET_USER_MONTHLY_USD (docs/costs.md)."""

    list_display = ("user", "daily_usd", "monthly_usd", "unlimited", "note", "updated_at")
    search_fields = ("user__username", "note")
    autocomplete_fields = ("user",)


@admin.register(UserFairShare)
class UserFairShareAdmin(admin.ModelAdmin):
    """Per-user overrides of AGENT_MAX_RUNNING_PER_USER / AGENT_MAX_RUNNING_PER_USER_BATCH (docs/limits.md)."""

    list_display = ("user", "max_running", "max_running_batch", "unlimited", "note", "updated_at")
    search_fields = ("user__username", "note")
    autocomplete_fields = ("user",)


@admin.register(SpendByUser)
class SpendByUserAdmin(admin.ModelAdmin):
    """Server-key spend of each user this UTC day and month (jobs and synchronous calls), largest first."""

    list_display = ("username", "spent_today", "spent_this_month", "paid_calls_this_month", "limits")
    search_fields = ("username",)

    def get_queryset(self, request):
        now = datetime.now(UTC)
        return spend.spend_by_user_annotate(
            super().get_queryset(request),
            day_start=period_bounds(now, "day")[0],
            month_start=period_bounds(now, "month")[0],
        ).order_by("-month_usd", "username")

    @admin.display(description="Today (USD)", ordering="day_usd")
    def spent_today(self, user) -> str:
        return f"{user.day_usd or 0:.6f}"

    @admin.display(description="This month (USD)", ordering="month_usd")
    def spent_this_month(self, user) -> str:
        return f"{user.month_usd or 0:.6f}"

    @admin.display(description="Paid calls this month", ordering="month_calls")
    def paid_calls_this_month(self, user) -> int:
        return user.month_calls

    @admin.display(description="Caps (day / month)")
    def limits(self, user) -> str:
        caps = user_limits(user.pk)
        return " / ".join("unlimited" if caps[p] is None else f"${caps[p]:g}" for p in ("day", "month"))

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
