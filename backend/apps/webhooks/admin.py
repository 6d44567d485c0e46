"""Admin: deliveries with their attempts inline, disabled endpoints, and secret metadata (never secrets)."""

from __future__ import annotations

from django.contrib import admin

from .models import Delivery, DeliveryAttempt, WebhookEndpointBlock, WebhookSecret


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    ordering = ["-series", "-number"]
    fields = [
        "series",
        "number",
        "started_at",
        "status_code",
        "outcome",
        "duration_ms",
        "error",
        "response_excerpt",
        "remote_address",
        "retry_in_sec",
    ]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["event_id", "event_type", "owner", "status", "attempts", "last_status_code", "created_at"]
    list_filter = ["status", "event_type"]
    search_fields = ["event_id", "url", "job__id", "batch__id", "owner__username"]
    date_hierarchy = "created_at"
    list_select_related = ["owner"]
    inlines = [DeliveryAttemptInline]
    readonly_fields = [
        "event_id",
        "event_type",
        "owner",
        "job",
        "batch",
        "url",
        "payload",
        "series",
        "attempts",
        "next_attempt_at",
        "locked_until",
        "last_status_code",
        "last_error",
        "created_at",
        "updated_at",
        "finished_at",
    ]
    fields = ["status", *readonly_fields]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(WebhookEndpointBlock)
class WebhookEndpointBlockAdmin(admin.ModelAdmin):
    list_display = ["url", "owner", "status_code", "created_at"]
    search_fields = ["url", "owner__username"]
    readonly_fields = ["owner", "url", "status_code", "reason", "delivery", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(WebhookSecret)
class WebhookSecretAdmin(admin.ModelAdmin):
    # The encrypted columns are not editable fields, so the form never renders them.
    list_display = ["user", "prefix", "created_at", "rotated_at", "previous_valid_until"]
    search_fields = ["user__username", "prefix"]
    fields = ["user", "prefix", "created_at", "rotated_at", "previous_prefix", "previous_valid_until"]
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False
