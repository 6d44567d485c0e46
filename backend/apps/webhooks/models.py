"""Webhook secrets, deliveries (one per event) and their attempts, and endpoints disabled by a 410.

Deliveries and attempts are rows so that the job's owner (API) and operators (admin) can see what was
sent, when, and what the receiver answered.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


def new_event_id() -> str:
    """A Standard Webhooks message id. Sent as `webhook-id` on every attempt of one event."""
    return f"msg_{uuid.uuid4().hex}"


class EventType(models.TextChoices):
    JOB_SUCCEEDED = "agent.job.succeeded", "Job succeeded"
    JOB_FAILED = "agent.job.failed", "Job failed"
    JOB_CANCELLED = "agent.job.cancelled", "Job cancelled"
    BATCH_COMPLETED = "agent.batch.completed", "Batch completed"


JOB_EVENT_TYPES = (EventType.JOB_SUCCEEDED, EventType.JOB_FAILED, EventType.JOB_CANCELLED)
BATCH_EVENT_TYPES = (EventType.BATCH_COMPLETED,)
#: The one job status -> event map: the event of a job that ended with each terminal status (the values
#: of `apps.agent.models.JobStatus`, which is a str enum, so either spelling looks it up).
EVENT_TYPE_BY_JOB_STATUS = {
    "succeeded": EventType.JOB_SUCCEEDED,
    "failed": EventType.JOB_FAILED,
    "cancelled": EventType.JOB_CANCELLED,
}


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    # Not sent: the endpoint answered 410 Gone to an earlier delivery of this owner.
    DISABLED = "disabled", "Disabled"


class AttemptOutcome(models.TextChoices):
    SUCCEEDED = "succeeded", "Succeeded"
    RETRY = "retry", "Will retry"
    FAILED = "failed", "Failed (permanent)"
    DISABLED = "disabled", "Endpoint disabled"


class WebhookSecret(models.Model):
    """The signing secret of one user. Stored encrypted; the plaintext is shown once, at creation.

    After a rotation the previous secret keeps signing (a second signature in `webhook-signature`) until
    `previous_valid_until`, so receivers can switch without dropping deliveries.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_secret"
    )
    secret_encrypted = models.TextField(editable=False)
    prefix = models.CharField(
        max_length=16, help_text='The first characters, e.g. "whsec_ab12", to recognise it.'
    )
    previous_secret_encrypted = models.TextField(blank=True, default="", editable=False)
    previous_prefix = models.CharField(max_length=16, blank=True, default="")
    previous_valid_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user_id})"


class Delivery(models.Model):
    """One event for one job or one batch, sent to one URL, with its retry state.

    At most one delivery per (job, event type) and per (batch, event type): a redelivered job task or a
    repeated completion check finds the existing row instead of creating a second event.
    """

    event_id = models.CharField(max_length=64, unique=True, default=new_event_id, editable=False)
    event_type = models.CharField(max_length=40, choices=EventType.choices)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    job = models.ForeignKey(
        "agent.AgentJob", null=True, blank=True, on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    batch = models.ForeignKey(
        "agent.Batch", null=True, blank=True, on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    url = models.URLField(max_length=2000)
    payload = models.JSONField()
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING, db_index=True
    )
    # A redelivery starts a new series of attempts with the same event id; `attempts` counts the current one.
    series = models.PositiveIntegerField(default=1)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Held while one worker performs an attempt, so that a duplicate task message does not send twice.
    locked_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "deliveries"
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="webhooks_delivery_due")]
        constraints = [
            models.UniqueConstraint(
                fields=["job", "event_type"],
                condition=models.Q(job__isnull=False),
                name="webhooks_delivery_one_per_job_event",
            ),
            models.UniqueConstraint(
                fields=["batch", "event_type"],
                condition=models.Q(batch__isnull=False),
                name="webhooks_delivery_one_per_batch_event",
            ),
            models.CheckConstraint(
                condition=models.Q(job__isnull=False, batch__isnull=True)
                | models.Q(job__isnull=True, batch__isnull=False),
                name="webhooks_delivery_job_xor_batch",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} {self.event_type} ({self.status})"


class DeliveryAttempt(models.Model):
    """One HTTP attempt of a delivery: when, how long, what came back, and what was decided."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    series = models.PositiveIntegerField()
    number = models.PositiveIntegerField(help_text="1-based, within the series.")
    started_at = models.DateTimeField()
    duration_ms = models.FloatField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=AttemptOutcome.choices)
    error = models.CharField(max_length=300, blank=True, default="")
    response_excerpt = models.TextField(blank=True, default="", help_text="The start of the response body.")
    remote_address = models.CharField(max_length=45, blank=True, default="", help_text="The IP connected to.")
    retry_in_sec = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["series", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "series", "number"], name="webhooks_attempt_unique")
        ]

    def __str__(self) -> str:
        return f"{self.delivery_id} #{self.series}.{self.number} {self.outcome}"


class WebhookEndpointBlock(models.Model):
    """A URL of one owner that answered 410 Gone: later events for it are recorded as disabled, not sent.

    A redelivery requested by the owner lifts the block (they say the endpoint is back).
    """

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_blocks"
    )
    url = models.URLField(max_length=2000)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    reason = models.CharField(max_length=300, blank=True, default="")
    delivery = models.ForeignKey(Delivery, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "url"], name="webhooks_block_owner_url")]

    def __str__(self) -> str:
        return f"{self.url} disabled for {self.owner_id}"
