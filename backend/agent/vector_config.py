"""Vector store and embedding settings, parsed from the environment (framework-free)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from core.env import Env

EMBEDDINGS_PROVIDERS = ("local", "openai_compatible")


@dataclass(frozen=True)
class VectorSettings:
    """Where the store lives and how texts become vectors.

    `url` set means a Chroma server (HttpClient) instead of the embedded store under `dir`.
    """

    dir: Path
    collection: str
    manifest_path: Path
    dataset_path: Path | None
    url: str | None
    embeddings_provider: str
    embeddings_model: str
    embeddings_batch_size: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, *, repo_dir: Path) -> VectorSettings:
        env = Env(environ)
        directory = Path(env.str("VECTOR_DB_DIR", str(repo_dir / "vector_db")))
        if not directory.is_absolute():
            directory = repo_dir / directory
        collection = env.str("VECTOR_DB_COLLECTION", "libros")
        manifest = Path(env.str("VECTOR_DB_MANIFEST", str(directory / "manifest.json")))
        if not manifest.is_absolute():
            manifest = repo_dir / manifest
        dataset = env.str("VECTOR_DATASET_PATH")
        provider = env.choice("EMBEDDINGS_PROVIDER", "local", EMBEDDINGS_PROVIDERS)
        batch = env.int("EMBEDDINGS_BATCH_SIZE", 32, minimum=1)
        return cls(
            dir=directory,
            collection=collection,
            manifest_path=manifest,
            dataset_path=Path(dataset) if dataset else None,
            url=env.str("VECTOR_DB_URL") or None,
            embeddings_provider=provider,
            embeddings_model=env.str(
                "EMBEDDINGS_MODEL",
                "multilingual-e5-small-q4" if provider == "local" else "text-embedding-3-small",
            ),
            embeddings_batch_size=batch,
        )
