"""Flower as the shipped servers run it: `python -m config.flower [flower options]` (in backend/) is
`celery -A config.celery_app flower [flower options]` with `/metrics` behind the same authentication as
every other page.

Flower 2.x serves `/metrics` (Prometheus) without authentication on purpose, so that a scraper needs no
credentials, and has no option to change that. Its figures name the task types, workers and queues and
their load: not for anyone who can reach the port. A Prometheus scrape job passes the same credentials
(`basic_auth` in its scrape config). `/healthcheck` stays open: it answers "OK" and nothing else.
"""

from __future__ import annotations

import sys

from celery.bin.celery import main as celery_main
from flower.views import monitor
from tornado import web


def protect_metrics() -> None:
    """Require Flower's own authentication (--basic-auth, --auth) on /metrics, as on its pages and API."""
    if not getattr(monitor.Metrics.get, "__wrapped__", None):
        monitor.Metrics.get = web.authenticated(monitor.Metrics.get)


def main(argv: list[str]) -> None:
    protect_metrics()
    sys.argv = ["celery", "-A", "config.celery_app", "flower", *argv]
    celery_main()


if __name__ == "__main__":
    main(sys.argv[1:])
