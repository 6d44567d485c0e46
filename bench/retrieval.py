"""Retrieval benchmark: Chroma (HNSW) against brute-force numpy cosine search, and the real-model fixture build.

Part 1, scaling (1k, 10k, 100k documents by default). Embedding 100k texts with the CPU model would take
hours, so these stores hold seeded, clustered synthetic vectors (`agent.synthetic.clustered_vectors`);
the build goes through the production `build_vector_db()` (validation, hashing, upserts, swap). For each
size: build throughput, query latency p50/p95 of `VectorStore.retrieve()` (Chroma + our ranking), the
same for an exact numpy search over the same vectors in the same run, their ratio, and recall@10 of
HNSW against the exact top 10.

Part 2, the real thing: the catalogue fixture embedded with the configured local model (full build,
docs/s) and query latency with the query embedding included (query cache off).

    python -m bench.retrieval                      # 1k, 10k, 100k + fixture
    python -m bench.retrieval --smoke              # 1k + 20 fixture books, quick
    python -m bench.retrieval --sizes 1000,10000 --out bench/out/retrieval.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "backend"))

from agent.embeddings import LocalE5Embedder, model_id  # noqa: E402
from agent.synthetic import clustered_vectors, synthetic_documents  # noqa: E402
from agent.types import Document  # noqa: E402
from agent.vector_build import build_vector_db  # noqa: E402
from agent.vector_config import VectorSettings  # noqa: E402
from agent.vector_store import VectorStore, release_client  # noqa: E402
from bench.stack import QUERIES  # noqa: E402

FIXTURE = REPO / "backend" / "apps" / "libros" / "fixtures" / "libros_prueba.json"
DIM = 384
TOP = 10
# The same questions the service benchmarks cycle through (one list for every benchmark).
FIXTURE_QUERIES = QUERIES


class PrecomputedEmbedder:
    """Returns stored vectors: documents by their text, queries by their text ("q-<n>")."""

    name = "synthetic-clustered"
    version = "1"
    dim = DIM

    def __init__(self, by_text: dict[str, np.ndarray]):
        self._by_text = by_text

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return np.vstack([self._by_text[text] for text in texts]).astype(np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self._by_text[text]


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def exact_top(matrix: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    """Brute-force cosine top k (rows are unit vectors, so the dot product is the cosine)."""
    scores = matrix @ query
    top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
    return [int(i) for i in top[np.argsort(-scores[top], kind="stable")]]


def settings_for(directory: Path, batch: int) -> VectorSettings:
    return VectorSettings.from_env(
        {"VECTOR_DB_DIR": str(directory), "EMBEDDINGS_BATCH_SIZE": str(batch)}, repo_dir=directory.parent
    )


def bench_size(n: int, queries: int, workdir: Path) -> dict[str, float]:
    """Build a store of `n` synthetic vectors and compare Chroma with brute force on `queries` queries."""
    vectors = clustered_vectors(n + queries, DIM, clusters=max(16, n // 500), seed=n)
    docs, query_vectors = synthetic_documents(n, seed=n), vectors[n:]
    by_text = {doc.text: vectors[i] for i, doc in enumerate(docs)}
    if len(by_text) != n:  # synthetic texts may repeat; make each unique so that every row is used
        docs = [dataclasses.replace(doc, text=f"{doc.text} #{i}") for i, doc in enumerate(docs)]
        by_text = {doc.text: vectors[i] for i, doc in enumerate(docs)}
    by_text.update({f"q-{i}": query_vectors[i] for i in range(queries)})
    embedder = PrecomputedEmbedder(by_text)
    settings = settings_for(workdir / f"synthetic-{n}", batch=5000)

    started = time.perf_counter()
    build_vector_db(docs, settings=settings, embedder=embedder, source=f"synthetic:{n}", progress=False)
    build_s = time.perf_counter() - started
    store = VectorStore(settings=settings, embedder=embedder, result_cache_size=0)
    store.retrieve("q-0", TOP)  # warm up: the first query loads the HNSW index from disk

    index_of = {doc.id: i for i, doc in enumerate(docs)}
    matrix = vectors[:n]
    chroma_ms, numpy_ms, recalls = [], [], []
    for i in range(queries):
        t = time.perf_counter()
        hits = store.retrieve(f"q-{i}", TOP)
        chroma_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        exact = exact_top(matrix, query_vectors[i], TOP)
        numpy_ms.append((time.perf_counter() - t) * 1000)
        recalls.append(len({index_of[hit.id] for hit in hits} & set(exact)) / TOP)
    release_client(settings)
    return {
        "n": n,
        "build_s": build_s,
        "docs_per_s": n / build_s,
        "chroma_p50": percentile(chroma_ms, 50),
        "chroma_p95": percentile(chroma_ms, 95),
        "numpy_p50": percentile(numpy_ms, 50),
        "numpy_p95": percentile(numpy_ms, 95),
        "recall": statistics.mean(recalls),
    }


def fixture_documents(limit: int | None) -> list[Document]:
    """The catalogue fixture as the libros table gives it: unsaved `Libro` rows through `libro_document`."""
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from apps.libros.catalogue import libro_document
    from apps.libros.models import Libro

    rows = json.loads(FIXTURE.read_text(encoding="utf-8"))[:limit]
    return [libro_document(Libro(pk=row["pk"], **row["fields"])) for row in rows]


def bench_fixture(limit: int | None, workdir: Path, repeat: int) -> dict[str, float]:
    """Full build of the fixture with the real model, then queries with their embedding included."""
    docs = fixture_documents(limit)
    embedder = LocalE5Embedder(cache_size=0)  # no query cache: each query pays its embedding
    settings = settings_for(workdir / "fixture", batch=32)
    started, cpu = time.perf_counter(), time.process_time()
    build_vector_db(docs, settings=settings, embedder=embedder, source="fixture", progress=False)
    build_s, build_cpu = time.perf_counter() - started, time.process_time() - cpu
    store = VectorStore(settings=settings, embedder=embedder, result_cache_size=0)  # each query searches
    store.retrieve("warm up", TOP)
    latencies, embed_ms = [], []
    for _ in range(repeat):
        for query in FIXTURE_QUERIES:
            t = time.perf_counter()
            embedder.embed_query(query)
            embed_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            store.retrieve(query, 5)
            latencies.append((time.perf_counter() - t) * 1000)
    release_client(settings)
    return {
        "n": len(docs),
        "build_s": build_s,
        "build_cpu_s": build_cpu,
        "docs_per_s": len(docs) / build_s,
        "query_p50": percentile(latencies, 50),
        "query_p95": percentile(latencies, 95),
        "embed_p50": percentile(embed_ms, 50),
        "queries": len(latencies),
        "model": model_id(embedder),
    }


def render(sizes: list[dict[str, float]], fixture: dict[str, float] | None, queries: int) -> str:
    lines = [
        "### Figures (`python -m bench.retrieval`)",
        "",
        f"Measured by `python -m bench.retrieval` on {platform.machine()} ({_cpus()} CPUs), Python {platform.python_version()}, "
        f"chromadb {_chroma_version()}; {queries} queries per size, k={TOP}. Synthetic vectors: 384-dim, clustered, seeded.",
        "",
        "| documents | build (s) | build (docs/s) | Chroma p50 (ms) | Chroma p95 (ms) | numpy p50 (ms) | numpy p95 (ms) | Chroma/numpy p50 | recall@10 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sizes:
        lines.append(
            f"| {r['n']:,} | {r['build_s']:.1f} | {r['docs_per_s']:,.0f} | {r['chroma_p50']:.2f} | {r['chroma_p95']:.2f} | "
            f"{r['numpy_p50']:.2f} | {r['numpy_p95']:.2f} | {r['chroma_p50'] / r['numpy_p50']:.1f}x | {r['recall']:.3f} |"
        )
    if fixture:
        lines += [
            "",
            f"Real model ({fixture['model']}) on the catalogue fixture ({fixture['n']} books), full build and "
            f"{fixture['queries']} queries with the embedding included (query cache off):",
            "",
            "| books | build (s) | build CPU (s) | build (docs/s) | query p50 (ms) | query p95 (ms) | of which embedding p50 (ms) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {fixture['n']} | {fixture['build_s']:.1f} | {fixture['build_cpu_s']:.1f} | {fixture['docs_per_s']:.1f} | "
            f"{fixture['query_p50']:.1f} | {fixture['query_p95']:.1f} | {fixture['embed_p50']:.1f} |",
        ]
    return "\n".join(lines) + "\n"


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _chroma_version() -> str:
    import chromadb

    return chromadb.__version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="Comma-separated store sizes.")
    parser.add_argument("--queries", type=int, default=200, help="Queries per size.")
    parser.add_argument("--smoke", action="store_true", help="1k documents, 50 queries, 20 fixture books.")
    parser.add_argument("--no-fixture", action="store_true", help="Skip the real-model fixture part.")
    parser.add_argument("--out", type=Path, help="Also write the markdown section to this file.")
    args = parser.parse_args(argv)
    sizes = [1000] if args.smoke else [int(s) for s in args.sizes.split(",") if s.strip()]
    queries = 50 if args.smoke else args.queries
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
        workdir = Path(tmp)
        results = []
        for n in sizes:
            print(f"size {n:,} ...", file=sys.stderr, flush=True)
            results.append(bench_size(n, queries, workdir))
        fixture = None
        if not args.no_fixture:
            print("fixture (real model) ...", file=sys.stderr, flush=True)
            fixture = bench_fixture(20 if args.smoke else None, workdir, repeat=1 if args.smoke else 5)
    text = render(results, fixture, queries)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
