"""Chroma access and retrieval: `VectorStore.retrieve()` (the degraded path is `agent/exact_search.py`).

The store is opened once per process (per directory or server URL) and shared by all threads. Opening
checks the manifest against the collection and the configured embedding model; anything missing,
corrupt or mismatched raises `VectorStoreUnavailable`, which the pipeline turns into degraded mode.

Layout of a record in the collection (the manifest's `metadata_schema` names this version):
- `id`: the document id; `document`: the embedded text; `embedding`: a unit vector (cosine space).
- metadata: the document's scalar metadata as is, and lists (genres) as Chroma list values. Chroma
  1.5 stores lists and filters them with `{"genres": {"$contains": "fantasy"}}`, so no string
  encoding ("|fantasy|") or per-genre boolean flags are needed; a store from an older layout is
  refused by the schema check instead of answering filters wrongly.

Longer than ~400 lines on purpose: opening (manifest and schema checks), the query and its filter
translation, and the per-store result cache share one store handle and its invariants; the degraded
path and the build already live apart (`exact_search.py`, `vector_build.py`).
- `_content_hash`: sha256 of text + metadata + model id, used by incremental builds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from core.caches import LRU

from .embeddings import Embedder, get_embedder
from .errors import InvalidQuery, VectorStoreBuilding, VectorStoreMissing, VectorStoreUnavailable
from .types import Filters, Hit
from .vector_config import VectorSettings

logger = logging.getLogger(__name__)

METADATA_SCHEMA = 1
DISTANCE = "cosine"
HASH_KEY = "_content_hash"
MANIFEST_KEY = "librarian_manifest"  # the manifest, as JSON, in the collection's own metadata
HIT_TOP_LEVEL = ("title", "author", "year")
# Chroma returns the k nearest; ask for a few more so that a tie at the k-th place is broken by id.
TIE_MARGIN = 8
#: Chroma's default HNSW `ef_search`, and the most a build sets it to (see `search_ef`).
DEFAULT_EF_SEARCH = 100
MAX_EF_SEARCH = 2_000
# A Chroma server cannot be watched like a local manifest file; re-check the build this often.
SERVER_RECHECK_SEC = 30.0
#: Distinct (query, k, filters) answers an opened store remembers (see `VectorStore`).
RESULT_CACHE_SIZE = 1024


# --- Chroma clients, one per process and location ------------------------------------------------

_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def chroma_settings() -> Any:
    """Chroma client settings: telemetry off (it would call out to the network)."""
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False, allow_reset=False)


def location_key(settings: VectorSettings) -> str:
    """Where the store lives: the server URL or the resolved directory."""
    return settings.url or str(Path(settings.dir).resolve())


def open_client(settings: VectorSettings) -> Any:
    """The process-wide Chroma client for `settings` (HttpClient when `url` is set).

    Raises `VectorStoreUnavailable` when the embedded store does not exist: a PersistentClient would
    silently create an empty one.
    """
    key = location_key(settings)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _new_client(settings)
            _CLIENTS[key] = client
        return client


def _new_client(settings: VectorSettings) -> Any:
    import chromadb

    try:
        if settings.url:
            parsed = urlparse(settings.url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise VectorStoreUnavailable(f"VECTOR_DB_URL={settings.url!r} is not an http(s) URL")
            return chromadb.HttpClient(
                host=parsed.hostname,
                port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                ssl=parsed.scheme == "https",
                settings=chroma_settings(),
            )
        if not (Path(settings.dir) / "chroma.sqlite3").is_file():
            progress = build_progress(settings)
            if progress is not None:
                raise VectorStoreBuilding(done=progress["done"], total=progress["total"])
            raise VectorStoreMissing(
                f"no vector store at {settings.dir}: run `manage.py build_vector_db` or `import_vector_db`"
            )
        return chromadb.PersistentClient(path=str(settings.dir), settings=chroma_settings())
    except VectorStoreUnavailable:
        raise
    except Exception as exc:  # Chroma raises many types (sqlite, rust bindings, HTTP); all mean "unavailable"
        raise VectorStoreUnavailable(f"cannot open the vector store: {type(exc).__name__}: {exc}") from exc


#: A build in progress writes this file into the store's directory (it vanishes with the swap that ends
#: the build), so that readers can say "being built, N/M" instead of "no store: run build_vector_db".
BUILD_STATUS_FILE = ".building.json"
#: A status file not updated for this long is from a build that died (a build updates it per batch).
BUILD_STATUS_STALE_SEC = 300.0


def build_progress(settings: VectorSettings) -> dict[str, Any] | None:
    """`{"done", "total", "phase", ...}` of the build running into `settings.dir`, or None when none runs."""
    path = Path(settings.dir) / BUILD_STATUS_FILE
    try:
        if time.time() - path.stat().st_mtime > BUILD_STATUS_STALE_SEC:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("done"), int)
        or not isinstance(data.get("total"), int)
    ):
        return None
    return data


def release_client(settings: VectorSettings) -> None:
    """Close and forget the cached client and store for `settings` (after a rebuild swapped the files)."""
    key = location_key(settings)
    with _CLIENTS_LOCK:
        client = _CLIENTS.pop(key, None)
    with _STORES_LOCK:
        for store_key in [store_key for store_key in _STORES if store_key[0] == key]:
            del _STORES[store_key]
    if client is not None:
        # Closing a client whose files were swapped away may fail; it is gone either way.
        with contextlib.suppress(Exception):
            client.close()


# --- Metadata layout ------------------------------------------------------------------------------


def search_ef(count: int) -> int:
    """The HNSW `ef_search` a store of `count` records is built with: its size, within [100, 2,000].

    Chroma's HNSW search is approximate, and below its `sync_threshold` (1,000 records) Chroma keeps the
    graph only in its log and rebuilds it in each process that opens the store (chroma-core/chroma#2675):
    the graphs differ a little, and so could two workers' answers to one question (a fresh copy of the
    catalogue opened by a fresh process missed the best book of a test query in 2 to 4 of 30 openings).
    With `ef_search` at least the store's size, a search visits every record the graph reaches: the
    same exact answer in every process (0 of 30, 0 of 45). Larger stores stop at 2,000: on 10k synthetic
    vectors, recall@10 0.998 at 5.5 ms a query against 0.87 at 0.9 ms with Chroma's 100.
    """
    return max(DEFAULT_EF_SEARCH, min(count, MAX_EF_SEARCH))


def to_chroma_metadata(metadata: dict[str, Any], content_hash: str) -> dict[str, Any]:
    """Document metadata as stored: None and empty lists dropped (Chroma refuses them), genres normalised."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if value is None or value == []:
            continue
        if key == "genres":
            value = [normalise_genre(g) for g in ([value] if isinstance(value, str) else value)]
        elif key == "language" and isinstance(value, str):
            value = value.strip().lower()
        out[key] = value
    out[HASH_KEY] = content_hash
    return out


def from_chroma_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Stored metadata without internal keys; genres always a list."""
    out = {key: value for key, value in (metadata or {}).items() if not key.startswith("_")}
    if "genres" in out and isinstance(out["genres"], str):
        out["genres"] = [out["genres"]]
    out.setdefault("genres", [])
    return out


def normalise_genre(genre: str) -> str:
    """Genre slugs compare lower-case, with spaces and hyphens as underscores ("Science fiction" -> science_fiction)."""
    return re.sub(r"[\s\-]+", "_", str(genre).strip().lower())


def where_clause(filters: Filters | None) -> dict[str, Any] | None:
    """The Chroma `where` filter for `filters`; several genres match any of them."""
    if filters is None:
        return None
    clauses: list[dict[str, Any]] = []
    if filters.language:
        clauses.append({"language": {"$eq": filters.language.strip().lower()}})
    genres = [normalise_genre(g) for g in filters.genres if g]
    if len(genres) == 1:
        clauses.append({"genres": {"$contains": genres[0]}})
    elif genres:
        clauses.append({"$or": [{"genres": {"$contains": g}} for g in genres]})
    if filters.year_min is not None:
        clauses.append({"year": {"$gte": int(filters.year_min)}})
    if filters.year_max is not None:
        clauses.append({"year": {"$lte": int(filters.year_max)}})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def id_sort_key(doc_id: str) -> tuple[int, int, str]:
    """Ids sort numerically when they are numbers ("2" before "10"), then as text."""
    return (0, int(doc_id), "") if doc_id.isdigit() else (1, 0, doc_id)


def make_hit(doc_id: str, score: float, metadata: dict[str, Any], text: str = "") -> Hit:
    """A `Hit` from public metadata: title/author/year on top, the rest (synopsis, genres, ...) in `metadata`."""
    rest = {key: value for key, value in metadata.items() if key not in HIT_TOP_LEVEL}
    year = metadata.get("year")
    return Hit(
        id=doc_id,
        title=str(metadata.get("title") or text[:80]),
        author=str(metadata.get("author") or ""),
        year=int(year) if isinstance(year, int | float) and not isinstance(year, bool) else None,
        score=score,
        metadata=rest,
    )


# --- Manifest -------------------------------------------------------------------------------------


def read_manifest(settings: VectorSettings | Path) -> dict[str, Any]:
    """The manifest of the store at `settings` (or the manifest file at a path).

    In server mode (`url` set) it is the one the collection carries. Raises `VectorStoreUnavailable`
    when it is missing or not a JSON object.
    """
    if isinstance(settings, VectorSettings):
        if settings.url:
            return open_store(settings).manifest
        path = Path(settings.manifest_path)
    else:
        path = Path(settings)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VectorStoreUnavailable(f"no manifest at {path}: the vector store was never built") from None
    except (OSError, ValueError) as exc:
        raise VectorStoreUnavailable(f"the manifest at {path} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise VectorStoreUnavailable(f"the manifest at {path} is not a JSON object")
    return data


def manifest_problems(
    manifest: dict[str, Any],
    *,
    collection_name: str,
    embedder: Embedder | None,
    count: int,
    stored: dict[str, Any] | None,
) -> list[str]:
    """Why `manifest` does not describe this collection and model (empty when it does)."""
    problems = []
    if manifest.get("metadata_schema") != METADATA_SCHEMA:
        problems.append(
            f"metadata schema {manifest.get('metadata_schema')!r}, this code reads {METADATA_SCHEMA}"
        )
    if manifest.get("collection") != collection_name:
        problems.append(f"collection {manifest.get('collection')!r}, configured {collection_name!r}")
    if manifest.get("distance") != DISTANCE:
        problems.append(f"distance {manifest.get('distance')!r}, expected {DISTANCE!r}")
    if manifest.get("document_count") != count:
        problems.append(
            f"{manifest.get('document_count')!r} documents in the manifest, {count} in the collection"
        )
    if stored is None:
        problems.append("the collection carries no manifest (it was not made by build_vector_db)")
    elif stored.get("build_id") != manifest.get("build_id"):
        problems.append(
            f"build {manifest.get('build_id')!r} in the manifest, {stored.get('build_id')!r} in the collection"
        )
    if embedder is not None:
        model, version = manifest.get("embedding_model"), manifest.get("embedding_version")
        if model != embedder.name or version != embedder.version:
            problems.append(
                f"built with {model!r} ({version!r}), configured {embedder.name!r} ({embedder.version!r})"
            )
        elif manifest.get("embedding_dim") != embedder.dim:
            problems.append(f"dimension {manifest.get('embedding_dim')!r}, the model gives {embedder.dim}")
    return problems


# --- The store ------------------------------------------------------------------------------------


class VectorStore:
    """An opened, checked collection. Thread-safe: Chroma clients may be shared between threads."""

    def __init__(
        self,
        *,
        settings: VectorSettings,
        embedder: Embedder,
        client: Any | None = None,
        result_cache_size: int = RESULT_CACHE_SIZE,
    ):
        """Open and check the store. Raises `VectorStoreUnavailable` with the reason.

        The last `result_cache_size` distinct (query, k, filters) answers are kept: the store is
        read-only while it is open (a rebuild swaps in a new directory, which opens a new `VectorStore`),
        so a repeated question gets the same hits without embedding or searching again.
        """
        self.settings = settings
        self.embedder = embedder
        self._results = LRU(result_cache_size)
        # Taken first: a swap during the checks below then shows up as a change on the next call.
        self.signature = manifest_signature(settings)
        self._client = client if client is not None else open_client(settings)
        try:
            self._collection = self._client.get_collection(settings.collection, embedding_function=None)
            count = self._collection.count()
            stored_raw = (self._collection.metadata or {}).get(MANIFEST_KEY)
            hnsw = (self._collection.configuration_json or {}).get("hnsw") or {}
        except Exception as exc:  # a missing collection, a corrupt sqlite file, an unreachable server
            raise VectorStoreUnavailable(
                f"cannot open collection {settings.collection!r}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            stored = json.loads(stored_raw) if stored_raw else None
        except ValueError:
            stored = None  # unreadable: treated as absent, which the checks below report
        if settings.url:
            # Worker machines of a server deployment have no manifest file: the collection carries it.
            if stored is None:
                raise VectorStoreUnavailable(
                    f"collection {settings.collection!r} on {settings.url} has no manifest"
                )
            self.manifest = stored
        else:
            self.manifest = read_manifest(Path(settings.manifest_path))
        problems = manifest_problems(
            self.manifest, collection_name=settings.collection, embedder=embedder, count=count, stored=stored
        )
        if problems:
            raise VectorStoreUnavailable(
                "the vector store does not match its manifest: " + "; ".join(problems)
            )
        self._count = count
        #: What the store's search visits; builds set `search_ef(count)`, older stores have Chroma's 100.
        self.ef_search = hnsw.get("ef_search", DEFAULT_EF_SEARCH)
        self.opened_at = time.monotonic()

    def retrieve(self, query: str, k: int = 5, filters: Filters | None = None) -> list[Hit]:
        """The `k` most similar documents to `query` that pass `filters`, best first.

        `score` is the cosine similarity clipped to [0, 1], rounded to 6 places; equal scores are
        ordered by id, so the same query on the same store always gives the same list. Raises
        `InvalidQuery` for k < 1 and `VectorStoreUnavailable` when Chroma or the embedder fails.
        """
        if k < 1:
            raise InvalidQuery(f"k must be at least 1, got {k}")
        if not query.strip() or self._count == 0:
            return []
        key = (query, k, filters or Filters())
        cached = self._results.get(key)
        if cached is not None:
            return list(cached)
        hits = self._search(query, k, filters)
        self._results.put(key, tuple(hits))
        return hits

    def _search(self, query: str, k: int, filters: Filters | None) -> list[Hit]:
        vector = self.embedder.embed_query(query)
        try:
            result = self._collection.query(
                query_embeddings=[vector.tolist()],
                n_results=min(k + TIE_MARGIN, self._count),
                where=where_clause(filters),
                include=["metadatas", "distances", "documents"],
            )
        except Exception as exc:
            raise VectorStoreUnavailable(f"vector query failed: {type(exc).__name__}: {exc}") from exc
        ids = result["ids"][0]
        texts = (result.get("documents") or [None])[0] or [""] * len(ids)
        hits = [
            make_hit(
                doc_id,
                round(min(1.0, max(0.0, 1.0 - float(distance))), 6),
                from_chroma_metadata(meta),
                text or "",
            )
            for doc_id, distance, meta, text in zip(
                ids, result["distances"][0], result["metadatas"][0], texts, strict=True
            )
        ]
        hits.sort(key=lambda hit: (-hit.score, id_sort_key(hit.id)))
        return hits[:k]

    @property
    def search_is_sized(self) -> bool:
        """Whether the store searches as builds set it (`search_ef` of its size); older stores do not."""
        return self.ef_search == search_ef(self._count)

    def count(self) -> int:
        """How many documents the store holds (checked against the manifest when it was opened)."""
        return self._count


def manifest_signature(settings: VectorSettings) -> tuple[int, int] | None:
    """Changes when a build swaps in a new store (new inode, new mtime)."""
    try:
        stat = Path(settings.manifest_path).stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns)


_STORES: dict[tuple[str, int], VectorStore] = {}
_STORES_LOCK = threading.Lock()


def open_store(settings: VectorSettings, *, embedder: Embedder | None = None) -> VectorStore:
    """The process-wide opened store for `settings`, reopened when a rebuild swapped in a new one.

    Raises `VectorStoreUnavailable` (missing, corrupt, mismatched) each time it is called while the
    store is unusable, so that a fixed store is picked up without restarting the worker.
    """
    embedder = embedder or get_embedder(settings)
    # Keyed by the embedder too (tests pass their own); the store keeps it alive, so its id stays unique.
    key = (location_key(settings), id(embedder))
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is not None and _still_current(store, settings):
            return store
    if store is not None and not settings.url:
        release_client(settings)  # the files were swapped: the old client reads a deleted directory
    store = VectorStore(settings=settings, embedder=embedder)
    if not store.search_is_sized:
        logger.warning(
            "the vector store at %s searches with ef_search %s for %s records (builds set %s): workers may "
            "not all find the same books; run `manage.py build_vector_db` (it embeds nothing for this)",
            location_key(settings),
            store.ef_search,
            store.count(),
            search_ef(store.count()),
        )
    with _STORES_LOCK:
        _STORES[key] = store
    return store


def _still_current(store: VectorStore, settings: VectorSettings) -> bool:
    if settings.url:
        return time.monotonic() - store.opened_at < SERVER_RECHECK_SEC
    return store.signature is not None and store.signature == manifest_signature(settings)


def retrieve(
    query: str, k: int = 5, filters: Filters | None = None, *, settings: VectorSettings
) -> list[Hit]:
    """`open_store(settings).retrieve(query, k, filters)`."""
    return open_store(settings).retrieve(query, k, filters)
