"""Build, export and import the vector store (framework-free; the Django command and the notebook call it).

Crash safety: an embedded build never writes into the live directory. It builds (or, when the previous
store is compatible, copies it and applies only the differences) in a temporary directory next to
the target, writes the manifest inside it, and then swaps the two directories with one atomic
`renameat2(RENAME_EXCHANGE)` (Linux), falling back to two renames with a recoverable backup. A
crash leaves either the old store or the new one, never half of each; a leftover temporary
directory is removed by the next build. One build at a time per target (an flock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
import sys
import time
import uuid
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from .atomic_swap import (
    build_lock,
    carry_over_extra_files,
    recover_interrupted_swap,
    remove_stale_temp_dirs,
    swap_directory,
    temp_dir,
    write_json_atomic,
)
from .datasets import content_hash, dataset_sha256, validate_documents
from .embeddings import Embedder, model_id
from .errors import VectorStoreUnavailable
from .types import Document
from .vector_config import VectorSettings
from .vector_store import (
    DISTANCE,
    HASH_KEY,
    MANIFEST_KEY,
    METADATA_SCHEMA,
    VectorStore,
    chroma_settings,
    open_client,
    release_client,
    to_chroma_metadata,
)

logger = logging.getLogger(__name__)

Manifest = dict[str, Any]
ZIP_FOLDER = "vector_db"  # the seed's export format: vector_db.zip holds vector_db/ with the manifest inside
MAX_IMPORT_BYTES = 4 * 1024**3  # refuse zip bombs: a 300-book store is a few MB, 100k docs a few hundred
SCALARS = (str, int, float, bool)

# --- Syncing a collection with the documents ----------------------------------------------------


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _existing_hashes(collection: Any, page: int = 5000) -> dict[str, str]:
    hashes: dict[str, str] = {}
    offset = 0
    while True:
        batch = collection.get(include=["metadatas"], limit=page, offset=offset)
        for doc_id, meta in zip(batch["ids"], batch["metadatas"], strict=True):
            hashes[doc_id] = str((meta or {}).get(HASH_KEY, ""))
        if len(batch["ids"]) < page:
            return hashes
        offset += page


def sync_collection(
    collection: Any,
    documents: Sequence[Document],
    hashes: dict[str, str],
    embedder: Embedder,
    *,
    batch_size: int,
    progress: bool,
) -> dict[str, int]:
    """Make `collection` hold exactly `documents`: embed and upsert new or changed ones, delete the rest.

    Returns counts: added, updated, deleted, unchanged. Raises `ValueError` if the embedder returns
    vectors of the wrong shape.
    """
    existing = _existing_hashes(collection)
    wanted = {doc.id for doc in documents}
    to_delete = sorted(set(existing) - wanted)
    to_embed = [doc for doc in documents if existing.get(doc.id) != hashes[doc.id]]
    added = sum(1 for doc in to_embed if doc.id not in existing)
    from tqdm import tqdm

    with tqdm(total=len(to_embed), desc="embedding", unit="doc", disable=not progress) as bar:
        for chunk in _chunks(to_embed, batch_size):
            vectors = embedder.embed_documents([doc.text for doc in chunk])
            if vectors.shape != (len(chunk), embedder.dim):
                raise ValueError(
                    f"embedder returned shape {vectors.shape} for {len(chunk)} texts of dim {embedder.dim}"
                )
            collection.upsert(
                ids=[doc.id for doc in chunk],
                embeddings=vectors,
                documents=[doc.text for doc in chunk],
                metadatas=[to_chroma_metadata(doc.metadata, hashes[doc.id]) for doc in chunk],
            )
            bar.update(len(chunk))
    for chunk in _chunks(to_delete, 5000):
        collection.delete(ids=list(chunk))
    return {
        "added": added,
        "updated": len(to_embed) - added,
        "deleted": len(to_delete),
        "unchanged": len(documents) - len(to_embed),
    }


# --- Build ---------------------------------------------------------------------------------------------


def _reusable(settings: VectorSettings, embedder: Embedder) -> bool:
    """Whether the current store opens cleanly with this model (then only the differences are applied)."""
    try:
        VectorStore(settings=settings, embedder=embedder)
    except VectorStoreUnavailable as exc:
        logger.info("full vector build: %s", exc.message)
        return False
    return True


def _create_collection(client: Any, name: str) -> Any:
    return client.create_collection(
        name, configuration={"hnsw": {"space": DISTANCE}}, embedding_function=None
    )


def build_vector_db(
    documents: Iterable[Document],
    *,
    settings: VectorSettings,
    embedder: Embedder,
    source: str,
    progress: bool | None = None,
    force: bool = False,
) -> Manifest:
    """Build or update the store at `settings` from `documents`; return the manifest written.

    Incremental unless `force`: when the existing store opens with this model, only new or changed
    documents (by content hash) are embedded and removed ids are deleted. `progress=None` shows a bar
    only when stdout is a terminal. Raises `DatasetError` for a malformed document before anything
    is written; on any failure the previous store is left as it was.
    """
    started = time.perf_counter()
    docs = validate_documents(documents)
    model = model_id(embedder)
    hashes = {doc.id: content_hash(doc, model) for doc in docs}
    show = sys.stdout.isatty() if progress is None else progress
    if settings.url:
        return _build_on_server(
            docs,
            hashes,
            settings=settings,
            embedder=embedder,
            source=source,
            progress=show,
            force=force,
            started=started,
        )

    target = Path(settings.dir)
    with build_lock(target):
        recover_interrupted_swap(target)
        remove_stale_temp_dirs(target)
        incremental = not force and _reusable(settings, embedder)
        tmp = temp_dir(target, "build")
        try:
            if incremental:
                shutil.copytree(target, tmp, dirs_exist_ok=True)
            else:
                carry_over_extra_files(target, tmp)
            import chromadb

            client = chromadb.PersistentClient(path=str(tmp), settings=chroma_settings())
            try:
                if incremental:
                    collection = client.get_collection(settings.collection, embedding_function=None)
                else:
                    collection = _create_collection(client, settings.collection)
                changes = sync_collection(
                    collection,
                    docs,
                    hashes,
                    embedder,
                    batch_size=settings.embeddings_batch_size,
                    progress=show,
                )
                manifest = _manifest(docs, settings, embedder, source, changes, incremental, started)
                collection.modify(metadata={MANIFEST_KEY: json.dumps(manifest, sort_keys=True)})
            finally:
                client.close()
            write_json_atomic(tmp / "manifest.json", manifest)
            swap_directory(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    release_client(
        settings
    )  # this process's readers reopen the new files; other processes see the manifest change
    if Path(settings.manifest_path).resolve() != (target / "manifest.json").resolve():
        write_json_atomic(Path(settings.manifest_path), manifest)
    return manifest


def _manifest(
    docs: Sequence[Document],
    settings: VectorSettings,
    embedder: Embedder,
    source: str,
    changes: dict[str, int],
    incremental: bool,
    started: float,
) -> Manifest:
    import chromadb

    return {
        "format": "librarian-vector-db",
        "metadata_schema": METADATA_SCHEMA,
        "build_id": uuid.uuid4().hex,
        "collection": settings.collection,
        "document_count": len(docs),
        "distance": DISTANCE,
        "embedding_provider": settings.embeddings_provider,
        "embedding_model": embedder.name,
        "embedding_version": embedder.version,
        "embedding_dim": embedder.dim,
        "dataset_source": source,
        "dataset_sha256": dataset_sha256(docs),
        "chromadb_version": chromadb.__version__,
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - started, 3),
        "incremental": incremental,
        **changes,
    }


def _build_on_server(
    docs: Sequence[Document],
    hashes: dict[str, str],
    *,
    settings: VectorSettings,
    embedder: Embedder,
    source: str,
    progress: bool,
    force: bool,
    started: float,
) -> Manifest:
    """Server mode: build a staging collection (seeded with the live one's vectors), then rename it over the live one.

    Readers see the old collection until the rename; between the delete and the rename (milliseconds)
    they get `VectorStoreUnavailable` and answer in degraded mode.
    """
    client = open_client(settings)
    staging_name = f"{settings.collection}-staging"
    with contextlib.suppress(Exception):  # no staging collection left over: nothing to delete
        client.delete_collection(staging_name)
    staging = _create_collection(client, staging_name)
    incremental = not force and _reusable(settings, embedder)
    if incremental:
        live = client.get_collection(settings.collection, embedding_function=None)
        _copy_records(live, staging)
    changes = sync_collection(
        staging, docs, hashes, embedder, batch_size=settings.embeddings_batch_size, progress=progress
    )
    manifest = _manifest(docs, settings, embedder, source, changes, incremental, started)
    staging.modify(metadata={MANIFEST_KEY: json.dumps(manifest, sort_keys=True)})
    with contextlib.suppress(Exception):  # a first build has no live collection
        client.delete_collection(settings.collection)
    staging.modify(name=settings.collection)
    release_client(settings)
    write_json_atomic(Path(settings.manifest_path), manifest)
    return manifest


def _copy_records(source: Any, dest: Any, page: int = 2000) -> None:
    offset = 0
    while True:
        batch = source.get(include=["embeddings", "documents", "metadatas"], limit=page, offset=offset)
        if batch["ids"]:
            dest.add(
                ids=batch["ids"],
                embeddings=batch["embeddings"],
                documents=batch["documents"],
                metadatas=batch["metadatas"],
            )
        if len(batch["ids"]) < page:
            return
        offset += page


# --- Export and import ---------------------------------------------------------------------------------


def export_zip(settings: VectorSettings, out_path: str | Path) -> Path:
    """Write the embedded store as a zip holding `vector_db/` (manifest inside); return the zip's path.

    Raises `VectorStoreUnavailable` when there is no built store to export.
    """
    target = Path(settings.dir)
    out = Path(out_path)
    with build_lock(target):
        if not (target / "manifest.json").is_file() or not (target / "chroma.sqlite3").is_file():
            raise VectorStoreUnavailable(f"no built vector store at {target} to export")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(target.rglob("*")):
                    if path.is_file():
                        archive.write(path, str(PurePosixPath(ZIP_FOLDER, *path.relative_to(target).parts)))
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return out


def _safe_members(archive: zipfile.ZipFile) -> tuple[str, list[zipfile.ZipInfo]]:
    """The zip's single top folder and its members; raises `ValueError` for anything unsafe."""
    members = archive.infolist()
    total = sum(info.file_size for info in members)
    if total > MAX_IMPORT_BYTES:
        raise ValueError(f"the zip expands to {total} bytes, more than the {MAX_IMPORT_BYTES} allowed")
    tops = set()
    for info in members:
        name = PurePosixPath(info.filename)
        if name.is_absolute() or ".." in name.parts or "\\" in info.filename or not name.parts:
            raise ValueError(f"unsafe path in the zip: {info.filename!r}")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise ValueError(f"symbolic link in the zip: {info.filename!r}")
        tops.add(name.parts[0])
    if len(tops) != 1:
        raise ValueError(f"the zip must hold one folder (vector_db/), found {sorted(tops)}")
    top = tops.pop()
    names = {info.filename for info in members}
    for required in ("manifest.json", "chroma.sqlite3"):
        if f"{top}/{required}" not in names:
            raise ValueError(f"the zip has no {top}/{required}")
    return top, members


def import_zip(zip_path: str | Path, settings: VectorSettings, *, embedder: Embedder) -> Manifest:
    """Replace the embedded store with the one in `zip_path` (an `export_zip` file); return its manifest.

    The zip is unpacked next to the target, opened and checked against its manifest and `embedder`,
    and only then swapped in atomically. Raises `ValueError` for an unsafe or malformed zip and
    `VectorStoreUnavailable` when the unpacked store does not check out; the live store is untouched.
    """
    if settings.url:
        raise ValueError(
            "import works on the embedded store; with VECTOR_DB_URL set, run build_vector_db instead"
        )
    target = Path(settings.dir)
    with build_lock(target):
        recover_interrupted_swap(target)
        remove_stale_temp_dirs(target)
        tmp = temp_dir(target, "import")
        try:
            with zipfile.ZipFile(zip_path) as archive:
                top, members = _safe_members(archive)
                for info in members:
                    dest = (tmp / info.filename).resolve()
                    if not dest.is_relative_to(tmp.resolve()):
                        raise ValueError(f"unsafe path in the zip: {info.filename!r}")
                    if info.is_dir():
                        dest.mkdir(parents=True, exist_ok=True)
                        continue
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
            unpacked = tmp / top
            check = dataclasses.replace(settings, dir=unpacked, manifest_path=unpacked / "manifest.json")
            import chromadb

            client = chromadb.PersistentClient(path=str(unpacked), settings=chroma_settings())
            try:
                manifest = VectorStore(settings=check, embedder=embedder, client=client).manifest
            finally:
                client.close()
            carry_over_extra_files(target, unpacked)
            swap_directory(unpacked, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    release_client(settings)
    if Path(settings.manifest_path).resolve() != (target / "manifest.json").resolve():
        write_json_atomic(Path(settings.manifest_path), manifest)
    return manifest
