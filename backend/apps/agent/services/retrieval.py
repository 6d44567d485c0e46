"""Adapts the framework-free retrieval core to this process: one store and one catalogue per process."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.conf import settings

from agent import exact_search as core_exact_search
from agent import vector_store
from agent.errors import VectorStoreUnavailable
from agent.types import Document, Filters, Hit
from apps.libros.catalogue import libro_documents

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_catalogue: tuple[float, list[Document]] | None = None
#: The degraded path reads the catalogue table; a short cache keeps it to one query per minute.
CATALOGUE_TTL_SEC = 60.0


class _Retriever:
    """Opens the vector store lazily and reports a broken one as `VectorStoreUnavailable` per call."""

    def retrieve(self, query: str, k: int, filters: Filters) -> list[Hit]:
        store = vector_store.open_store(settings.VECTOR)
        return store.retrieve(query, k, filters)


_retriever = _Retriever()


def get_retriever() -> _Retriever:
    return _retriever


def catalogue_documents() -> list[Document]:
    global _catalogue
    with _lock:
        if _catalogue is None or time.monotonic() - _catalogue[0] > CATALOGUE_TTL_SEC:
            _catalogue = (time.monotonic(), libro_documents())
        return _catalogue[1]


def exact_search(query: str, k: int, filters: Filters) -> list[Hit]:
    """The degraded path: keyword search over the catalogue table, no vector store involved."""
    return core_exact_search.exact_search(query, k, filters, catalogue_documents())


_identity: tuple[Any, dict[str, Any]] | None = None


def store_identity() -> dict[str, Any]:
    """Which build of the store answered (from its manifest), recorded on each job.

    Every job records it: the parsed manifest is kept until the file changes (a rebuild swaps it), so a
    job costs a stat() instead of reading and parsing the file.
    """
    global _identity
    stat = None if settings.VECTOR.url else vector_store.manifest_signature(settings.VECTOR)
    signature = None if stat is None else (str(settings.VECTOR.manifest_path), stat)
    cached = _identity
    if signature is not None and cached is not None and cached[0] == signature:
        return dict(cached[1])
    try:
        manifest = vector_store.read_manifest(settings.VECTOR)
    except VectorStoreUnavailable:
        return {}
    keys = (
        "build_id",
        "collection",
        "document_count",
        "built_at",
        "dataset_sha256",
        "embedding_model",
        "embedding_dim",
    )
    identity = {key: manifest.get(key) for key in keys if key in manifest}
    if signature is not None:
        _identity = (signature, identity)
    return dict(identity)


def store_health() -> dict[str, Any]:
    try:
        store = vector_store.open_store(settings.VECTOR)
    except VectorStoreUnavailable as exc:
        return {"ok": False, "error": exc.message}
    return {"ok": True, **store_identity(), "documents": store.count()}


def retrieval_warm_up() -> None:
    """Load the embedding model and open the store now, so that the first jobs do not pay for it.

    Called when a worker starts; a broken store is only logged (jobs will answer degraded).
    """
    try:
        get_retriever().retrieve("warm up", 1, Filters())
    except VectorStoreUnavailable as exc:
        logger.warning("vector store unavailable at worker start: %s", exc.message)
