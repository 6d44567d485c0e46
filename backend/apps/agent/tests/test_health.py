"""GET /api/health: 200 when every part answers, 503 naming the part that does not."""

from __future__ import annotations

import pytest

from apps.agent.services import health

pytestmark = pytest.mark.django_db


@pytest.fixture
def all_ok(monkeypatch):
    for name in ("broker", "workers", "vector_store"):
        monkeypatch.setitem(health.CHECKS, name, lambda: {"ok": True})


def test_green_when_every_part_answers(client, all_ok):
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["failing"] == []
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["llm"]["provider"] == "stub"


@pytest.mark.parametrize("part", ["database", "broker", "workers", "vector_store", "llm"])
def test_each_failing_part_gives_503_and_names_itself(client, all_ok, monkeypatch, part):
    def broken():
        raise ConnectionError(f"{part} is down")

    monkeypatch.setitem(health.CHECKS, part, broken)
    response = client.get("/api/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["failing"] == [part]
    assert body["checks"][part] == {"ok": False, "error": f"ConnectionError: {part} is down"}


def test_no_worker_is_reported(client, all_ok, monkeypatch):
    monkeypatch.setitem(health.CHECKS, "workers", health._workers)
    from config.celery_app import app

    monkeypatch.setattr(app.control, "ping", lambda timeout: [])
    response = client.get("/api/health")
    assert response.status_code == 503
    assert response.json()["failing"] == ["workers"]


def test_real_broker_probe_against_unreachable_redis(client, all_ok, monkeypatch, settings):
    monkeypatch.setitem(health.CHECKS, "broker", health._broker)
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    response = client.get("/api/health")
    assert response.status_code == 503
    assert response.json()["failing"] == ["broker"]


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("amqp://guest:guest@127.0.0.1:1//", "OperationalError"),
        # The machine's RabbitMQ answers, but refuses a wrong password / an unknown vhost: the probe
        # completes the AMQP handshake, it does not stop at the TCP connect.
        ("amqp://guest:wrong-password@127.0.0.1:5672//", "AccessRefused"),
        ("amqp://guest:guest@127.0.0.1:5672/no-such-vhost", "NotAllowed"),
    ],
)
def test_real_broker_probe_speaks_amqp_and_fails(client, all_ok, monkeypatch, settings, url, error):
    monkeypatch.setitem(health.CHECKS, "broker", health._broker)
    settings.CELERY_BROKER_URL = url
    response = client.get("/api/health")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["broker"]
    assert body["checks"]["broker"]["error"].startswith(f"{error}:")
    assert "wrong-password" not in response.content.decode()


@pytest.mark.parametrize(
    ("url", "kind"),
    [("amqp://guest:guest@127.0.0.1:5672//", "rabbitmq"), ("redis://127.0.0.1:6379/0", "redis")],
)
def test_real_broker_probe_is_green_on_both_brokers(client, all_ok, monkeypatch, settings, url, kind):
    monkeypatch.setitem(health.CHECKS, "broker", health._broker)
    settings.CELERY_BROKER_URL = url
    response = client.get("/api/health")
    assert response.status_code == 200, response.json()
    assert response.json()["checks"]["broker"] == {"ok": True, "kind": kind}


def test_health_never_shows_a_key(client, all_ok, settings):
    import dataclasses

    settings.LLM = dataclasses.replace(settings.LLM, provider="openai_compatible", api_key="sk-secret-health")
    response = client.get("/api/health")
    assert "sk-secret-health" not in response.content.decode()
    assert response.json()["checks"]["llm"]["key_source"] == "server"


def test_a_store_being_built_is_reported_as_such_not_as_missing(
    client, all_ok, monkeypatch, settings, tmp_path, caplog
):
    import dataclasses
    import json
    import logging

    from agent.vector_store import BUILD_STATUS_FILE, release_client
    from apps.agent.services import retrieval
    from apps.agent.services.retrieval import retrieval_warm_up, store_health

    # Given a first build running into an empty store directory (it has embedded 96 of 320 books)
    directory = tmp_path / "vector_db"
    directory.mkdir()
    (directory / BUILD_STATUS_FILE).write_text(json.dumps({"phase": "embedding", "done": 96, "total": 320}))
    settings.VECTOR = dataclasses.replace(
        settings.VECTOR, dir=directory, manifest_path=directory / "manifest.json"
    )
    monkeypatch.setitem(health.CHECKS, "vector_store", store_health)
    try:
        # Then the health check says so
        body = client.get("/api/health").json()
        assert body["checks"]["vector_store"] == {
            "ok": False,
            "error": "vector store is being built, 96/320 documents",
        }
        # And a starting worker says so too, at INFO, without telling anyone to run build_vector_db
        with caplog.at_level(logging.INFO, logger=retrieval.__name__):
            retrieval_warm_up()
        messages = [r.getMessage() for r in caplog.records if r.name == retrieval.__name__]
        assert messages == [
            "vector store is being built, 96/320 documents: jobs answer from exact search (degraded) until it is ready"
        ]
        assert all(r.levelno == logging.INFO for r in caplog.records if r.name == retrieval.__name__)
    finally:
        release_client(settings.VECTOR)
