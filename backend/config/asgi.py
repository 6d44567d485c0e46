"""The ASGI application: what the API server runs (uvicorn, `make up` and compose; docs/operations.md).

Async views (the job wait and event stream) run on the event loop; sync views run in Django's thread as
usual. With DEBUG on, static files (the admin's, the API docs') are served too, as `runserver` would.
"""

import os

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_asgi_application()
if settings.DEBUG:
    application = ASGIStaticFilesHandler(application)
