"""Scenario 10: owners are isolated, and every non-public endpoint needs credentials.

The endpoints are not listed by hand: they are read from the URL resolver, so an endpoint added later
(batches, reports, reruns...) is covered by these tests the day it appears.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pytest
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from apps.agent.models import AgentJob, Batch, JobStatus
from apps.agent.tests.factories import batch_make, job_make

pytestmark = [pytest.mark.security, pytest.mark.django_db]

#: URL names that answer without credentials, on purpose.
PUBLIC = {"ping", "health", "schema", "swagger-ui", "redoc"}
#: Per-user singletons rather than lists (tested on their own below).
SINGLETONS = {"webhooks:secret"}
METHODS = ("get", "post", "put", "patch", "delete")


@dataclass(frozen=True)
class Endpoint:
    name: str  # "namespace:name"
    route: str  # for messages
    converters: dict  # kwarg -> converter
    methods: tuple[str, ...]

    def url(self, **kwargs) -> str:
        return reverse(self.name, kwargs=kwargs)


def _walk(patterns, prefix: str = "", namespace: str = ""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            ns = entry.namespace or ""
            full_ns = f"{namespace}:{ns}" if namespace and ns else (ns or namespace)
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern), full_ns)
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry, namespace


def api_endpoints() -> list[Endpoint]:
    """Every endpoint under /api/, with the HTTP methods its view implements."""
    found = []
    resolver = get_resolver()
    for route, pattern, namespace in _walk(resolver.url_patterns):
        if not route.startswith("api/"):
            continue
        assert pattern.name, f"unnamed API route {route!r}: name it so that it can be tested"
        view_class = getattr(pattern.callback, "view_class", None) or getattr(pattern.callback, "cls", None)
        assert view_class is not None, route
        methods = tuple(m for m in METHODS if hasattr(view_class, m))
        name = f"{namespace}:{pattern.name}" if namespace else pattern.name
        found.append(Endpoint(name, "/" + route, _route_converters(route), methods))
    return found


def _route_converters(route: str) -> dict[str, str]:
    """{kwarg: converter name} parsed from a route string such as "api/agent/jobs/<uuid:job_id>/cancel"."""
    out = {}
    for part in route.split("<")[1:]:
        spec = part.split(">", 1)[0]
        converter, _, kwarg = spec.rpartition(":")
        out[kwarg] = converter or "str"
    return out


def _sample_kwargs(endpoint: Endpoint) -> dict:
    values = {"uuid": uuid.uuid4(), "int": 1, "str": "x", "slug": "x", "path": "x"}
    return {kwarg: values.get(conv, "x") for kwarg, conv in endpoint.converters.items()}


ENDPOINTS = api_endpoints()
PROTECTED = [e for e in ENDPOINTS if e.name not in PUBLIC]
OBJECT_ENDPOINTS = [e for e in PROTECTED if any(c == "uuid" for c in e.converters.values())]
COLLECTION_ENDPOINTS = [
    e for e in PROTECTED if not e.converters and "get" in e.methods and e.name not in SINGLETONS
]


def test_the_resolver_sees_the_known_endpoints():
    """Guards the walker itself: if it found nothing, every test below would pass vacuously."""
    names = {e.name for e in ENDPOINTS}
    assert {
        "agent-jobs",
        "agent-job-detail",
        "agent-job-cancel",
        "agent-job-redeliver",
        "agent-run",
    } <= names
    assert names >= PUBLIC
    assert len(OBJECT_ENDPOINTS) >= 3


# --- 401 for everything that is not public ------------------------------------------------------------


def _call(client, method: str, url: str, **extra):
    if method in ("get", "delete"):
        return getattr(client, method)(url, **extra)
    return getattr(client, method)(url, data=json.dumps({}), content_type="application/json", **extra)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    return body


@pytest.mark.parametrize("endpoint", PROTECTED, ids=lambda e: e.route)
@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "not_authenticated"),
        ("Token not-a-real-token", "authentication_failed"),
        ("Bearer some-jwt", "not_authenticated"),
        ("Token ", "authentication_failed"),
        ("Basic YWxpY2U6cHctYWxpY2U=", "not_authenticated"),
    ],
    ids=["none", "bad-token", "bearer", "empty-token", "basic"],
)
def test_every_protected_endpoint_is_401_without_valid_credentials(anon, user, endpoint, authorization, code):
    extra = {"HTTP_AUTHORIZATION": authorization} if authorization is not None else {}
    url = endpoint.url(**_sample_kwargs(endpoint))
    for method in endpoint.methods:
        response = _call(anon, method, url, **extra)
        assert_error(response, 401, code)
        assert response["WWW-Authenticate"] == "Token", (method, url)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_endpoints_answer_without_credentials(anon, name, monkeypatch):
    from apps.agent import apis

    # Health would probe Redis and a worker; its answer (200 or 503) is not the point here.
    monkeypatch.setattr(
        apis.system, "health_check", lambda: (True, {"status": "ok", "failing": [], "checks": {}})
    )
    response = anon.get(reverse(name))

    assert response.status_code == 200, (name, response.status_code)


def test_admin_requires_a_staff_login(anon):
    response = anon.get("/admin/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


# --- another user's objects are 404 everywhere --------------------------------------------------------


@pytest.fixture
def alice_objects(user, known_settings):
    """Alice's objects in the states where each operation would do something: a queued job (cancel), a
    finished job with a webhook delivery (redeliver, rerun), and a batch holding a job (get, cancel,
    report)."""
    from apps.agent.services.events import job_event_enqueue

    known_settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.example.com"]

    queued = job_make(user, status=JobStatus.QUEUED)
    finished = job_make(
        user,
        result={"message": "Moby-Dick", "results": [], "actions": []},
        webhook_url="https://hooks.example.com/alice",
    )
    with transaction.atomic():
        job_event_enqueue(job=finished)
    batch = batch_make(user, completed=False)
    job_make(user, status=JobStatus.QUEUED, batch=batch)
    return {"queued": queued, "finished": finished, "batch": batch}


def _state(objects) -> dict:
    from apps.webhooks.models import Delivery

    jobs = AgentJob.objects.order_by("id").values_list("id", "status", "cancel_requested", "owner_id")
    deliveries = Delivery.objects.order_by("id").values_list("id", "status", "series", "attempts")
    batches = Batch.objects.order_by("id").values_list("id", "cancelled_at", "completed_at")
    return {"jobs": list(jobs), "deliveries": list(deliveries), "batches": list(batches)}


def _object_urls(endpoint: Endpoint, objects) -> list[str]:
    """The endpoint's URL for each of Alice's objects it can address."""
    urls = []
    kinds = {k: ("batch" if "batch" in k else "job") for k in endpoint.converters}
    candidates = {"job": [objects["queued"].id, objects["finished"].id], "batch": [objects["batch"].id]}
    # One kwarg per endpoint in this API; for several, pair them with the first object of each kind.
    (kwarg, kind), *rest = kinds.items()
    for object_id in candidates[kind]:
        kwargs = {kwarg: object_id, **{k: candidates[v][0] for k, v in rest}}
        urls.append(endpoint.url(**kwargs))
    return urls


@pytest.mark.parametrize("endpoint", OBJECT_ENDPOINTS, ids=lambda e: e.route)
def test_another_users_objects_are_404_and_untouched(api, other_api, alice_objects, endpoint):
    """Mallory gets exactly what she would get for an id that does not exist: no existence oracle."""
    before = _state(alice_objects)
    for url in _object_urls(endpoint, alice_objects):
        for method in endpoint.methods:
            response = _call(other_api, method, url)
            body = assert_error(response, 404, "not_found")
            # The same answer as for a random id.
            random_url = endpoint.url(**_sample_kwargs(endpoint))
            unknown = _call(other_api, method, random_url)
            assert unknown.status_code == 404
            assert unknown.json()["error"]["code"] == body["error"]["code"]
            assert unknown.json()["error"]["message"] == body["error"]["message"]
    assert _state(alice_objects) == before


@pytest.mark.parametrize(
    "endpoint", [e for e in OBJECT_ENDPOINTS if "get" in e.methods], ids=lambda e: e.route
)
def test_the_owner_reads_her_objects(api, alice_objects, endpoint):
    """The control for the test above: the same URLs are not 404 for their owner."""
    for url in _object_urls(endpoint, alice_objects):
        assert api.get(url).status_code == 200, url


def test_the_owner_can_cancel_and_redeliver(api, alice_objects):
    queued, finished = alice_objects["queued"], alice_objects["finished"]

    assert api.post(reverse("agent-job-cancel", args=[queued.id])).status_code == 202
    assert api.post(reverse("agent-job-redeliver", args=[finished.id])).status_code == 202


@pytest.mark.parametrize("endpoint", COLLECTION_ENDPOINTS, ids=lambda e: e.route)
def test_lists_show_only_the_callers_objects(api, other_api, alice_objects, other_user, endpoint):
    mallory_job = job_make(other_user, status=JobStatus.QUEUED, query="mallory's own question")
    alice_ids = {str(j.id) for j in AgentJob.objects.filter(owner=alice_objects["queued"].owner)}
    alice_ids |= {str(b.id) for b in Batch.objects.filter(owner=alice_objects["queued"].owner)}

    for query in ("", "?status=queued", "?status=succeeded", "?limit=100", "?offset=0&limit=1"):
        response = other_api.get(endpoint.url() + query)
        if response.status_code == 400:
            continue  # a filter this list does not take
        assert response.status_code == 200, (endpoint.route, query, response.content[:300])
        text = json.dumps(response.json())
        leaked = [object_id for object_id in alice_ids if object_id in text]
        assert leaked == [], (endpoint.route, query)
    if endpoint.name == "agent-jobs":
        listed = [row["id"] for row in other_api.get(endpoint.url()).json()["results"]]
        assert listed == [str(mallory_job.id)]


def test_the_webhook_secret_is_per_user(api, other_api):
    alice = api.post(reverse("webhooks:secret")).json()

    assert_error(other_api.get(reverse("webhooks:secret")), 404, "no_webhook_secret")
    mallory = other_api.post(reverse("webhooks:secret")).json()
    assert mallory["secret"] != alice["secret"]
    assert api.get(reverse("webhooks:secret")).json()["prefix"] == alice["prefix"]


def test_rerun_of_another_users_job_is_refused_like_an_unknown_id(api, other_api, alice_objects):
    """A batch of re-runs names job ids: Alice's ids are, for Mallory, exactly ids that do not exist."""
    finished = alice_objects["finished"]
    before = _state(alice_objects)

    theirs = other_api.post(reverse("agent-batches"), {"jobs": [str(finished.id)]}, format="json")
    unknown = other_api.post(reverse("agent-batches"), {"jobs": [str(uuid.uuid4())]}, format="json")
    by_filter = other_api.post(reverse("agent-batches"), {"filter": {}}, format="json")

    assert theirs.status_code == unknown.status_code
    assert 400 <= theirs.status_code < 500
    assert theirs.json()["error"]["code"] == unknown.json()["error"]["code"]
    # A filter selects among the caller's own jobs only: Mallory has none.
    assert 400 <= by_filter.status_code < 500, by_filter.content
    assert _state(alice_objects) == before
    assert not Batch.objects.filter(owner=other_api.user).exists()
    # The control: Alice may re-run it.
    assert api.post(reverse("agent-batches"), {"jobs": [str(finished.id)]}, format="json").status_code == 202
