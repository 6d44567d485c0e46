from __future__ import annotations

import pytest

from agent.errors import VectorStoreUnavailable
from agent.types import Hit

BOOKS = [
    Hit(
        "1",
        "Moby-Dick",
        "Herman Melville",
        1851,
        0.91,
        {"genres": ["adventure"], "synopsis": "A captain hunts a whale."},
    ),
    Hit(
        "2",
        "The Old Man and the Sea",
        "Ernest Hemingway",
        1952,
        0.85,
        {"genres": ["literary_fiction"], "synopsis": "An old fisherman and a marlin."},
    ),
    Hit(
        "3",
        "Treasure Island",
        "Robert Louis Stevenson",
        1883,
        0.80,
        {"genres": ["adventure"], "synopsis": "Pirates and a map."},
    ),
]


class FakeStore:
    """Stands in for the Chroma store in unit tests (the real one is exercised end to end)."""

    def __init__(self) -> None:
        self.fail = False
        self.calls: list[tuple] = []

    def retrieve(self, query, k, filters):
        self.calls.append((query, k, filters))
        if self.fail:
            raise VectorStoreUnavailable("The vector store is missing (test).")
        return BOOKS[:k]


@pytest.fixture
def store(monkeypatch) -> FakeStore:
    from apps.agent.services import retrieval
    from apps.agent.tests.wiring import wire_runtime

    fake = FakeStore()
    identity = {"collection": "libros", "document_count": 3}
    wire_runtime(
        monkeypatch,
        retriever=lambda: fake,
        exact_search=lambda q, k, f: [
            Hit("7", "Exact Match", "Some One", 1900, 1.0, {"genres": [], "synopsis": ""})
        ][:k],
        store_identity=lambda: identity,
    )
    monkeypatch.setattr(retrieval, "store_identity", lambda: identity)  # batches record it too
    return fake
