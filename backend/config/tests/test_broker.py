"""config/broker.py: what differs between Redis and RabbitMQ."""

import pytest

from config import broker


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", broker.REDIS),
        ("rediss://h:6380/1", broker.REDIS),
        ("amqp://guest:guest@127.0.0.1:5672//", broker.RABBITMQ),
        ("pyamqp://h//", broker.RABBITMQ),
        ("AMQPS://h/v", broker.RABBITMQ),
    ],
)
def test_kind_follows_the_scheme(url, kind):
    assert broker.broker_kind(url) == kind


def test_other_schemes_are_refused():
    with pytest.raises(ValueError, match="unsupported broker scheme 'sqs'"):
        broker.broker_kind("sqs://key:secret@")


def test_ranks_keep_their_order_on_both_brokers():
    # Redis serves the lowest number first, RabbitMQ the highest: rank 0 (interactive) wins on both.
    assert [broker.message_priority(broker.REDIS, r) for r in (0, 9)] == [0, 9]
    assert [broker.message_priority(broker.RABBITMQ, r) for r in (0, 9)] == [9, 0]


def test_only_rabbitmq_declares_priority_queues():
    assert broker.task_queues(broker.REDIS) is None
    queues = broker.task_queues(broker.RABBITMQ)
    assert [q.name for q in queues] == ["agent", "batch", "webhooks"]
    assert all(q.durable and q.queue_arguments["x-max-priority"] == 9 for q in queues)
    assert {q.queue_arguments["x-queue-type"] for q in queues} == {"classic"}


def test_unacked_limit():
    assert broker.unacked_limit_problem(consumer_timeout=1800, task_time_limit=300, countdown_max=900) == ""
    problem = broker.unacked_limit_problem(consumer_timeout=1000, task_time_limit=300, countdown_max=900)
    assert problem.startswith("more seconds than a message can stay unacked (1200")


@pytest.mark.parametrize("kind", [broker.REDIS, broker.RABBITMQ])
def test_published_priorities_put_batch_jobs_last_on_both_brokers(kind):
    """What Celery really publishes for the project's tasks: route priorities survive (no task-level
    default overrides them)."""
    from celery import Celery

    import apps.agent.tasks  # noqa: F401 - the project's tasks are shared: a new app finalized gets them
    import apps.webhooks.tasks  # noqa: F401

    app = Celery("probe", set_as_current=False)
    app.conf.task_routes = broker.task_routes(kind, batch_queue="agent", batch_rank=9)
    app.conf.task_queues = broker.task_queues(kind)
    app.finalize()
    names = ("agent.job_run", "agent.batch_job_run", "agent.jobs_sweep", "agent.delivery_send")
    assert {app.tasks[name].__module__ for name in names} == {"apps.agent.tasks", "apps.webhooks.tasks"}
    sent = {}
    for name in names:  # as Task.apply_async does: the task's own options, then its route
        options = dict(app.tasks[name]._get_exec_options())
        sent[name] = app.amqp.router.route(options, name, (), {})["priority"]
    first, last = (9, 0) if kind == broker.RABBITMQ else (0, 9)
    assert sent == {
        "agent.job_run": first,
        "agent.batch_job_run": last,
        "agent.jobs_sweep": first,
        "agent.delivery_send": first,
    }
