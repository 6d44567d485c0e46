"""The broker: Redis or RabbitMQ, chosen by the scheme of CELERY_BROKER_URL.

Everything that differs between the two lives here and is applied by config/settings.py: the queues'
declarations, how "batch below interactive" is spelled as a message priority, and the transport options.
Plain Python and kombu (no Django), so that settings can import it.

Priorities. Librarian ranks work on one scale, Redis's: 0 is served first, 9 last. Interactive jobs and
webhook deliveries rank 0, batch jobs AGENT_BATCH_PRIORITY (9). Redis keeps one list per queue and
priority step and a worker's BRPOP lists every queue's step 0 before any step 9, so the rank holds across
queues. RabbitMQ serves the *highest* number first, only inside one queue, and only when the queue was
declared with `x-max-priority`: ranks are published there as 9 - rank, every queue is declared with
`x-max-priority` 9, and batch jobs share the `agent` queue by default (AGENT_BATCH_QUEUE), because
RabbitMQ has no priority between queues (a worker's consumers on two queues are served in turn).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from kombu import Exchange, Queue

REDIS = "redis"
RABBITMQ = "rabbitmq"
#: The queues workers consume (`--queues`), on both brokers.
QUEUE_NAMES = ("agent", "batch", "webhooks")
#: Highest rank (least urgent) and RabbitMQ's `x-max-priority`: 10 levels, RabbitMQ's advice is few.
MAX_PRIORITY = 9
_SCHEMES = {
    "redis": REDIS,
    "rediss": REDIS,
    "redis+socket": REDIS,
    "amqp": RABBITMQ,
    "amqps": RABBITMQ,
    "pyamqp": RABBITMQ,
}


def broker_kind(url: str) -> str:
    """REDIS or RABBITMQ for a broker URL; ValueError for any other scheme."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"unsupported broker scheme {scheme!r} (use redis:// or amqp://)")
    return _SCHEMES[scheme]


def message_priority(kind: str, rank: int) -> int:
    """The number to publish for `rank` (0 = most urgent ... MAX_PRIORITY = least) on this broker."""
    return MAX_PRIORITY - rank if kind == RABBITMQ else rank


def task_routes(kind: str, *, batch_queue: str, batch_rank: int) -> dict[str, dict]:
    """Celery's task_routes: each task's queue and message priority on this broker.

    Every route carries a priority (RabbitMQ takes a message without one as the lowest, below batch
    jobs). Exact names win over the `agent.*` pattern (the sweeps, the probe).
    """
    urgent = message_priority(kind, 0)
    return {
        "agent.job_run": {"queue": "agent", "priority": urgent},
        "agent.batch_job_run": {"queue": batch_queue, "priority": message_priority(kind, batch_rank)},
        "agent.delivery_send": {"queue": "webhooks", "priority": urgent},
        "agent.deliveries_sweep": {"queue": "webhooks", "priority": urgent},
        "agent.*": {"queue": "agent", "priority": urgent},
    }


def task_queues(kind: str) -> tuple[Queue, ...] | None:
    """The queue declarations for this broker (None on Redis: kombu's defaults serve).

    RabbitMQ: durable classic queues with `x-max-priority`. Classic, not quorum (docs/operations.md,
    "RabbitMQ"): quorum queues ignore priorities before RabbitMQ 4.0 (3.10 here), and with them Celery
    switches to per-consumer prefetch and needs its native delayed delivery for countdowns.
    """
    if kind != RABBITMQ:
        return None
    return tuple(
        Queue(
            name,
            Exchange(name, type="direct", durable=True),
            routing_key=name,
            durable=True,
            queue_arguments={"x-queue-type": "classic", "x-max-priority": MAX_PRIORITY},
        )
        for name in QUEUE_NAMES
    )


def transport_options(kind: str, *, visibility_timeout: int) -> dict:
    """kombu transport options for this broker."""
    if kind == RABBITMQ:
        # Publisher confirms: a publish the broker did not take raises, so the job is left for the sweep
        # instead of being lost silently (a broker restarting while the API publishes).
        return {"confirm_publish": True}
    return {
        # Unacked messages return to the queue after this many seconds; it must outlast the longest job
        # or a slow job would be delivered twice (checked in settings).
        "visibility_timeout": visibility_timeout,
        # Fail fast when Redis is down so that the API can answer 503 instead of hanging.
        "max_retries": 2,
        "interval_start": 0,
        "interval_step": 0.5,
        "interval_max": 1,
        "socket_connect_timeout": 3,
        "socket_timeout": 5,
        # One Redis list per priority step and queue; a worker's BRPOP lists every queue's step 0 before
        # any step 9, which is what puts batch jobs behind interactive ones (AGENT_BATCH_PRIORITY).
        "priority_steps": [0, 3, 6, 9],
    }


def unacked_limit_problem(*, consumer_timeout: float, task_time_limit: float, countdown_max: float) -> str:
    """Why RabbitMQ's `consumer_timeout` would close a worker's channel under these settings, or "".

    With acks_late a job's message stays unacked for the whole task (at most CELERY_TASK_TIME_LIMIT,
    which already bounds AGENT_JOB_TIMEOUT_SEC); a webhook retry scheduled with a countdown stays unacked
    in the worker until it is due and then runs. RabbitMQ closes the channel of a delivery unacked past
    `consumer_timeout`, re-queueing everything the worker held.
    """
    longest = max(task_time_limit, countdown_max + task_time_limit)
    if consumer_timeout <= longest:
        return (
            f"more seconds than a message can stay unacked ({longest:g}: CELERY_TASK_TIME_LIMIT "
            f"{task_time_limit:g} + WEBHOOK_COUNTDOWN_MAX_SEC {countdown_max:g})"
        )
    return ""
