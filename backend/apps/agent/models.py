"""Jobs, their trace steps, and batches. The job row is the truth about a job; Celery is transport."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.validators import MinValueValidator
from django.db import models

from agent import types


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Batch(models.Model):
    """A group of jobs created together, typically re-runs of past jobs with overrides."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agent_batches"
    )
    source = models.CharField(max_length=16, help_text="queries | jobs")
    selection = models.JSONField(
        default=dict, blank=True, help_text='How the jobs were chosen: {"ids": [...]}, {"filter": {...}}.'
    )
    overrides = models.JSONField(
        default=dict, blank=True, help_text="model, cost_mode, top_k, filters, vector_store_build."
    )
    size = models.PositiveIntegerField(default=0, help_text="How many jobs the batch created.")
    estimated_cost_usd = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="Worst case of its paid calls at creation (docs/costs.md); empty when not paid or unpriced.",
    )
    webhook_url = models.URLField(max_length=2000, blank=True, default="")
    idempotency_key = models.CharField(max_length=200, blank=True, default="")
    request_fingerprint = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="agent_batch_owner_idempotency_key",
            )
        ]

    def __str__(self) -> str:
        return f"Batch {self.id}"

    @property
    def status(self) -> str:
        """running | cancelling (cancel asked, running jobs finishing) | completed | cancelled."""
        if self.completed_at is not None:
            return "cancelled" if self.cancelled_at else "completed"
        return "cancelling" if self.cancelled_at else "running"


class AgentJob(models.Model):
    """One question to the agent, from submission to a terminal state."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agent_jobs")
    query = models.TextField()
    options = models.JSONField(default=dict, blank=True, help_text="top_k and filters.")
    status = models.CharField(
        max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True
    )
    degraded = models.BooleanField(default=False)
    result = models.JSONField(null=True, blank=True, help_text="message, results, actions (contract fields).")
    error = models.JSONField(null=True, blank=True, help_text='{"code", "message"} when the job failed.')
    attempts = models.PositiveIntegerField(default=0)
    attempts_handed_back = models.PositiveIntegerField(
        default=0, help_text="Attempts its worker handed back after a database error (not counted as used)."
    )
    timeout_sec = models.FloatField(help_text="Deadline of the whole job, in seconds from its first start.")

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(
        max_length=255,
        blank=True,
        default="",
        help_text="The worker process (host:pid) running the current attempt; services/worker_liveness.py.",
    )
    finished_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)

    # The cost decision, resolved once at submission and reused on retry. Never a key.
    cost_mode = models.CharField(max_length=16)
    key_source = models.CharField(max_length=16)
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=200)

    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    usage_estimated = models.BooleanField(default=False)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    latency_ms = models.FloatField(null=True, blank=True, help_text="Time from first start to finish.")

    vector_store = models.JSONField(
        default=dict, blank=True, help_text="Manifest identity of the store used."
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reruns"
    )
    batch = models.ForeignKey(Batch, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs")
    webhook_url = models.URLField(max_length=2000, blank=True, default="")
    idempotency_key = models.CharField(max_length=200, blank=True, default="")
    request_fingerprint = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"]),
            models.Index(fields=["status", "enqueued_at"]),
            # Fair share counts and lines up one user's jobs by status (services/fairness.py).
            models.Index(fields=["owner", "status", "created_at"]),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="agent_job_owner_idempotency_key",
            )
        ]

    def __str__(self) -> str:
        return f"Job {self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class TraceStep(models.Model):
    """One step of one attempt of a job: retrieve, prompt, llm, compose. Stored as rows to query them."""

    job = models.ForeignKey(AgentJob, on_delete=models.CASCADE, related_name="trace_steps")
    attempt = models.PositiveIntegerField()
    position = models.PositiveIntegerField()
    name = models.CharField(max_length=32)
    started_at = models.DateTimeField()
    duration_ms = models.FloatField()
    inputs = models.JSONField(default=dict, blank=True)
    outputs = models.JSONField(default=dict, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    cost_usd = models.FloatField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["attempt", "position"]
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt", "position"], name="agent_trace_step_unique")
        ]

    def __str__(self) -> str:
        return f"{self.job_id} #{self.attempt}.{self.position} {self.name}"

    @classmethod
    def from_step(cls, step: types.TraceStep, *, job_id: Any, attempt: int, position: int) -> TraceStep:
        """The row of the core's `step` (its fields are `types.TRACE_STEP_FIELDS`, declared above for the
        migrations; `test_models` checks that the two stay in step)."""
        values = {name: getattr(step, name) for name in types.TRACE_STEP_FIELDS}
        return cls(job_id=job_id, attempt=attempt, position=position, **values)


class UserBudget(models.Model):
    """An operator's override of the default spending caps (BUDGET_USER_*_USD) for one user.

    An empty amount means "the default"; `unlimited` lifts the user's own caps (the global cap still
    applies). Only calls paid with the server's key count (docs/costs.md).
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agent_budget"
    )
    daily_usd = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True, help_text="Empty: BUDGET_USER_DAILY_USD."
    )
    monthly_usd = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True, help_text="Empty: BUDGET_USER_MONTHLY_USD."
    )
    unlimited = models.BooleanField(
        default=False, help_text="No per-user cap (the global cap still applies)."
    )
    note = models.CharField(max_length=200, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Budget of {self.user}"


class UserFairShare(models.Model):
    """An operator's override of the fair-share caps (AGENT_MAX_RUNNING_PER_USER[_BATCH]) for one user.

    A model of its own rather than fields on `UserBudget`: a budget is money per period, this is jobs in
    flight, and each has its own "unlimited". An empty cap means "the default"; `unlimited` lifts both of
    the user's caps. Read at each admission, so a change applies to the user's next job (docs/limits.md).
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agent_fair_share"
    )
    max_running = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Most jobs (batch jobs apart) in flight at once. Empty: AGENT_MAX_RUNNING_PER_USER.",
    )
    max_running_batch = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Most batch jobs in flight at once. Empty: AGENT_MAX_RUNNING_PER_USER_BATCH.",
    )
    unlimited = models.BooleanField(default=False, help_text="No per-user cap on jobs in flight.")
    note = models.CharField(max_length=200, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "user fair share"

    def __str__(self) -> str:
        return f"Fair share of {self.user}"


class SyncCall(models.Model):
    """The spend of one synchronous call (POST /api/agent/) paid with the server's key.

    A job keeps its spend on its row (`AgentJob.cost_usd`); a synchronous call has no row of its own, so it
    gets this one: budgets are rebuilt from both, and usage and the admin's spend list read both.
    """

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agent_sync_calls"
    )
    finished_at = models.DateTimeField()
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=200)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6)

    class Meta:
        indexes = [models.Index(fields=["owner", "finished_at"]), models.Index(fields=["finished_at"])]

    def __str__(self) -> str:
        return f"Synchronous call of {self.owner_id} at {self.finished_at} (${self.cost_usd})"


class SpendByUser(User):
    """The users, as the admin's "spend by user" list sees them (read-only; apps/agent/admin.py)."""

    class Meta:
        proxy = True
        verbose_name = "spend by user"
        verbose_name_plural = "spend by user"
