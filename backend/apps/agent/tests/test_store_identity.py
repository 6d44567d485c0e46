"""`store_identity()`: the manifest of the build that answered, recorded on every job, read once per build."""

from __future__ import annotations

import json

import pytest

import agent.vector_store
from agent.tests.vector_helpers import vector_settings
from apps.agent.services import retrieval


@pytest.fixture
def manifest_file(tmp_path, settings):
    settings.VECTOR = vector_settings(tmp_path)
    settings.VECTOR.manifest_path.parent.mkdir(parents=True, exist_ok=True)
    return settings.VECTOR.manifest_path


def write(path, **fields):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"collection": "libros", "document_count": 3, **fields}))
    tmp.replace(path)  # as a build swaps it in: a new file


def test_identity_is_read_once_per_build_and_follows_a_rebuild(manifest_file, monkeypatch):
    write(manifest_file, build_id="b1", unrelated="not recorded")
    reads: list[object] = []
    real = agent.vector_store.read_manifest
    monkeypatch.setattr(agent.vector_store, "read_manifest", lambda s: reads.append(s) or real(s))

    first = retrieval.store_identity()
    assert first == {"build_id": "b1", "collection": "libros", "document_count": 3}
    first["build_id"] = "changed by a caller"
    assert retrieval.store_identity()["build_id"] == "b1"  # callers get copies
    assert len(reads) == 1

    write(manifest_file, build_id="b2")
    assert retrieval.store_identity()["build_id"] == "b2"
    assert len(reads) == 2


def test_no_manifest_gives_an_empty_identity(manifest_file):
    assert not manifest_file.exists()
    assert retrieval.store_identity() == {}
