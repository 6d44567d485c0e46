"""The one Celery app of the project. Workers start it with `celery -A config.celery_app worker`."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("librarian")
# Every Celery setting lives in Django settings under the CELERY_ prefix (config/settings.py).
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
