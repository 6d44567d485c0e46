"""Included by config/urls.py under "api/"."""

from django.urls import path

from .apis import WebhookSecretApi

app_name = "webhooks"

urlpatterns = [
    path("webhooks/secret", WebhookSecretApi.as_view(), name="secret"),
]
