"""Included by config/urls.py under "api/"."""

from django.urls import path

from .apis import JobRedeliverApi, WebhookSecretApi

app_name = "webhooks"

urlpatterns = [
    path("webhooks/secret", WebhookSecretApi.as_view(), name="secret"),
    path("agent/jobs/<uuid:job_id>/redeliver", JobRedeliverApi.as_view(), name="job-redeliver"),
]
