"""Fixtures shared by the Django test suites: users, API clients, and known settings."""

from __future__ import annotations

import dataclasses

import pytest


@pytest.fixture(autouse=True)
def _known_settings(settings):
    """Tests start from the same configuration whatever the machine's environment says."""
    settings.LLM = dataclasses.replace(
        settings.LLM,
        provider="stub",
        api_key=None,
        base_url=None,
        cost_mode=type(settings.LLM.cost_mode)("paid"),
    )
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.CELERY_TASK_EAGER_PROPAGATES = True
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    # The default hasher costs most of a second per user created; tests need no slow hashing.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    from config.celery_app import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    # What an API process remembers of finished jobs does not outlive a test (apis/jobs.py).
    from apps.agent.apis.jobs import finished_views

    finished_views.clear()
    yield
    app.conf.task_always_eager = False


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(username="alice", password="pw-alice")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user(username="mallory", password="pw-mallory")


@pytest.fixture
def api(user):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def other_api(other_user):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(other_user)
    return client
