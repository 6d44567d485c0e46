"""Build, export and import the vector store (framework-free; the Django command and the notebook call it).

Crash safety: an embedded build never writes into the live directory. It builds (or, when the previous
store is compatible, copies it and applies only the differences) in a temporary directory next to
the target, writes the manifest inside it, and then swaps the two directories with one atomic
`renameat2(RENAME_EXCHANGE)` (Linux), falling back to two renames with a recoverable backup. A
crash leaves either the old store or the new one, never half of each; a leftover temporary
directory is removed by the next build. One build at a time per target (an flock).

Longer than ~400 lines on purpose: build, incremental update, export and import share the manifest, the
content hashes and the atomic swap (`atomic_swap.py`); the dataset loading lives in `datasets.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
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
from .errors import VectorStoreMissing, VectorStoreUnavailable
from .types import Document
from .vector_config import VectorSettings
from .vector_store import (
    BUILD_STATUS_FILE,
    DISTANCE,
    HASH_KEY,
    MANIFEST_KEY,
    METADATA_SCHEMA,
    VectorStore,
    chroma_settings,
    open_client,
    release_client,
    search_ef,
    to_chroma_metadata,
)

logger = logging.getLogger(__name__)

Manifest = dict[str, Any]
ZIP_FOLDER = "vector_db"  # the seed's export format: vector_db.zip holds vector_db/ with the manifest inside
MAX_IMPORT_BYTES = 4 * 1024**3  # refuse zip bombs: a 300-book store is a few MB, 100k docs a few hundred


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
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Make `collection` hold exactly `documents`: embed and upsert new or changed ones, delete the rest.

    Returns counts: added, updated, deleted, unchanged. `on_progress(done, total)` is called before
    the first batch and after each one, over the documents to embed. Raises `ValueError` if the
    embedder returns vectors of the wrong shape.
    """
    existing = _existing_hashes(collection)
    wanted = {doc.id for doc in documents}
    to_delete = sorted(set(existing) - wanted)
    to_embed = [doc for doc in documents if existing.get(doc.id) != hashes[doc.id]]
    added = sum(1 for doc in to_embed if doc.id not in existing)
    from tqdm import tqdm

    done = 0
    if on_progress is not None:
        on_progress(done, len(to_embed))
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
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, len(to_embed))
    for chunk in _chunks(to_delete, 5000):
        collection.delete(ids=list(chunk))
    return {
        "added": added,
        "updated": len(to_embed) - added,
        "deleted": len(to_delete),
        "unchanged": len(documents) - len(to_embed),
    }


# --- Build ---------------------------------------------------------------------------------------------


def _reusable(settings: VectorSettings, embedder: Embedder) -> VectorStore | None:
    """The current store when it opens cleanly with this model (then only the differences are
    applied), else None."""
    try:
        return VectorStore(settings=settings, embedder=embedder)
    except VectorStoreMissing:
        # Its message tells a reader to run a build; this is one, and nothing is wrong.
        logger.info("full vector build: no store yet at %s", settings.dir)
        return None
    except VectorStoreUnavailable as exc:
        logger.info("full vector build (the store there cannot be reused): %s", exc.message)
        return None


def _holds(store: VectorStore | None, docs: Sequence[Document]) -> bool:
    """Whether `store` holds exactly `docs` and searches as a build of them would (`search_ef`)."""
    return (
        store is not None
        and store.manifest.get("dataset_sha256") == dataset_sha256(docs)
        and store.search_is_sized
    )


def _create_collection(client: Any, name: str) -> Any:
    return client.create_collection(
        name, configuration={"hnsw": {"space": DISTANCE}}, embedding_function=None
    )


def _finish_collection(collection: Any, manifest: Manifest) -> None:
    """Store the manifest in the collection and size its search to its records."""
    collection.modify(metadata={MANIFEST_KEY: json.dumps(manifest, sort_keys=True)})
    _size_search(collection, manifest["document_count"])


def _size_search(collection: Any, count: int) -> None:
    """Give the collection the `ef_search` of a store of `count` records (`search_ef`: why)."""
    collection.modify(configuration={"hnsw": {"ef_search": search_ef(count)}})


def build_vector_db(
    documents: Iterable[Document],
    *,
    settings: VectorSettings,
    embedder: Embedder,
    source: str,
    progress: bool | None = None,
    force: bool = False,
) -> Manifest:
    """Build or update the store at `settings` from `documents`; return its manifest plus `outcome`.

    `outcome` (not stored) says what this call did: "up_to_date" (the store already held exactly these
    documents with this model: nothing written, the counts say no change), "imported" (no usable store,
    and the bundled `settings.seed_zip` held exactly these documents: imported, verified, nothing
    embedded) or "built". Incremental unless `force`: when the existing store (or the imported seed)
    opens with this model, only new or changed documents (by content hash) are embedded and removed
    ids are deleted. `progress=None` shows a bar
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
        current = None if force else _reusable(settings, embedder)
        seeded = (
            current is None
            and not force
            and settings.seed_zip is not None
            and _import_seed(Path(settings.seed_zip), docs, source, settings, embedder) is not None
        )
        if seeded:
            current = _reusable(settings, embedder)
            if _holds(current, docs):
                return {**current.manifest, "outcome": "imported"}
        if _holds(current, docs):
            # Nothing to embed, nothing to write: the store already holds exactly these documents.
            return {**current.manifest, "outcome": "up_to_date", **_no_changes(docs)}
        # A store of these documents built before `search_ef` gets it from an incremental build that
        # embeds nothing (a copy, the new configuration, a swap).
        manifest = _build_embedded(
            docs,
            hashes,
            target,
            settings=settings,
            embedder=embedder,
            source=source,
            progress=show,
            incremental=current is not None,
            started=started,
        )
    release_client(
        settings
    )  # this process's readers reopen the new files; other processes see the manifest change
    if Path(settings.manifest_path).resolve() != (target / "manifest.json").resolve():
        write_json_atomic(Path(settings.manifest_path), manifest)
    return {**manifest, "outcome": "built"}


def _no_changes(docs: Sequence[Document]) -> dict[str, Any]:
    return {"incremental": True, "added": 0, "updated": 0, "deleted": 0, "unchanged": len(docs)}


def _write_build_status(target: Path, *, phase: str, done: int, total: int) -> None:
    write_json_atomic(
        target / BUILD_STATUS_FILE,
        {"phase": phase, "done": done, "total": total, "pid": os.getpid(), "updated_at": time.time()},
    )


def _build_embedded(
    docs: Sequence[Document],
    hashes: dict[str, str],
    target: Path,
    *,
    settings: VectorSettings,
    embedder: Embedder,
    source: str,
    progress: bool,
    incremental: bool,
    started: float,
) -> Manifest:
    """Build in a temporary directory and swap it in; called with the build lock held.

    While it runs, `BUILD_STATUS_FILE` in the store's directory says how far it got (readers report
    "being built, N/M"); the swap that ends the build takes the file away with the old directory.
    """
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    _write_build_status(target, phase="starting", done=0, total=len(docs))
    tmp = temp_dir(target, "build")
    try:
        if incremental:
            shutil.copytree(
                target,
                tmp,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns(BUILD_STATUS_FILE, f".{BUILD_STATUS_FILE}.tmp-*"),
            )
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
                progress=progress,
                on_progress=lambda done, total: _write_build_status(
                    target, phase="embedding", done=done, total=total
                ),
            )
            manifest = _manifest(docs, settings, embedder, source, changes, incremental, started)
            _finish_collection(collection, manifest)
        finally:
            client.close()
        write_json_atomic(tmp / "manifest.json", manifest)
        swap_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _clear_build_status(target, created=created)
        raise
    return manifest


def _clear_build_status(target: Path, *, created: bool) -> None:
    """Remove the status file, and the store's directory when this build created it and it stayed empty."""
    (target / BUILD_STATUS_FILE).unlink(missing_ok=True)
    if created:
        with contextlib.suppress(OSError):  # not empty: something else lives there now
            target.rmdir()


def _import_seed(
    seed_zip: Path, docs: Sequence[Document], source: str, settings: VectorSettings, embedder: Embedder
) -> Manifest | None:
    """Import the bundled store (`VECTOR_DB_SEED`) when it fits; return its manifest, else None.

    Called with the build lock held, when there is no usable store. It fits when it was built with
    this model and holds either exactly `docs` or documents from the same `source` (the catalogue
    table, edited since): the incremental build that follows embeds only the documents that differ.
    A seed of another dataset, or one that does not verify (checksums, model), is logged and
    skipped: the store is built instead.
    """
    if not seed_zip.is_file():
        return None
    try:
        with zipfile.ZipFile(seed_zip) as archive:
            top, _ = _safe_members(archive)
            seed = json.loads(archive.read(f"{top}/manifest.json"))
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        logger.warning("bundled vector store %s is unreadable (%s): building instead", seed_zip, exc)
        return None
    wanted = {
        "collection": settings.collection,
        "embedding_model": embedder.name,
        "embedding_version": embedder.version,
        "metadata_schema": METADATA_SCHEMA,
        "distance": DISTANCE,
    }
    differs = {key: (seed.get(key), value) for key, value in wanted.items() if seed.get(key) != value}
    if seed.get("dataset_sha256") != dataset_sha256(docs) and seed.get("dataset_source") != source:
        differs["dataset"] = (seed.get("dataset_source"), source)
    if differs:
        logger.info("bundled vector store %s does not fit (%s): building instead", seed_zip, differs)
        return None
    target = Path(settings.dir)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    _write_build_status(target, phase="importing", done=0, total=len(docs))
    try:
        manifest = _import_unlocked(seed_zip, settings, embedder=embedder)
    except (OSError, ValueError, zipfile.BadZipFile, VectorStoreUnavailable) as exc:
        _clear_build_status(target, created=created)
        logger.warning("bundled vector store %s does not verify (%s): building instead", seed_zip, exc)
        return None
    # The swap took the status file away with the old directory.
    release_client(settings)
    if Path(settings.manifest_path).resolve() != (target / "manifest.json").resolve():
        write_json_atomic(Path(settings.manifest_path), manifest)
    logger.info(
        "imported the bundled vector store %s (%s documents)", seed_zip, manifest.get("document_count")
    )
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
    incremental = not force and _reusable(settings, embedder) is not None
    if incremental:
        live = client.get_collection(settings.collection, embedding_function=None)
        _copy_records(live, staging)
    changes = sync_collection(
        staging, docs, hashes, embedder, batch_size=settings.embeddings_batch_size, progress=progress
    )
    manifest = _manifest(docs, settings, embedder, source, changes, incremental, started)
    _finish_collection(staging, manifest)
    with contextlib.suppress(Exception):  # a first build has no live collection
        client.delete_collection(settings.collection)
    staging.modify(name=settings.collection)
    release_client(settings)
    write_json_atomic(Path(settings.manifest_path), manifest)
    return {**manifest, "outcome": "built"}


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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_zip(settings: VectorSettings, out_path: str | Path) -> Path:
    """Write the embedded store as a zip holding `vector_db/` (manifest inside); return the zip's path.

    The zip's manifest is the store's plus `files`: the size and sha256 of every other file, which
    `import_zip` verifies before it swaps anything in. Members are written in a fixed order with a
    fixed timestamp, so that the same store exports to the same bytes. Raises `VectorStoreUnavailable`
    when there is no built store to export.
    """
    target = Path(settings.dir)
    out = Path(out_path)
    with build_lock(target):
        if not (target / "manifest.json").is_file() or not (target / "chroma.sqlite3").is_file():
            raise VectorStoreUnavailable(f"no built vector store at {target} to export")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
        files = {
            PurePosixPath(*path.relative_to(target).parts).as_posix(): path
            for path in sorted(target.rglob("*"))
            if path.is_file() and path.name not in ("manifest.json", BUILD_STATUS_FILE)
        }
        manifest["files"] = {
            name: {"bytes": path.stat().st_size, "sha256": _sha256_file(path)} for name, path in files.items()
        }
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
                _write_member(
                    archive,
                    f"{ZIP_FOLDER}/manifest.json",
                    (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
                )
                for name, path in files.items():
                    _write_member(archive, f"{ZIP_FOLDER}/{name}", path.read_bytes())
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return out


def _write_member(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data, compresslevel=9)


def verify_files(unpacked: Path, manifest: Manifest) -> None:
    """Check the unpacked files against the manifest's `files` (size and sha256, none missing or extra).

    Raises `ValueError` naming the first file that differs.
    """
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        raise ValueError("the manifest lists no file checksums (export the store with build_vector_db --zip)")
    present = {
        PurePosixPath(*path.relative_to(unpacked).parts).as_posix()
        for path in unpacked.rglob("*")
        if path.is_file() and path.name != "manifest.json"
    }
    extra = sorted(present - set(listed))
    if extra:
        raise ValueError(f"file not listed in the manifest: {extra[0]}")
    for name, expected in sorted(listed.items()):
        path = unpacked / name
        if name not in present:
            raise ValueError(f"file listed in the manifest is missing: {name}")
        if not isinstance(expected, dict):
            raise ValueError(f"malformed checksum entry for {name}")
        if path.stat().st_size != expected.get("bytes") or _sha256_file(path) != expected.get("sha256"):
            raise ValueError(f"checksum mismatch: {name}")


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

    The zip is unpacked next to the target, its files checked against the manifest's checksums, the
    store opened and checked against its manifest and `embedder`, and only then swapped in atomically.
    Raises `ValueError` for an unsafe or malformed zip or a checksum mismatch and
    `VectorStoreUnavailable` when the unpacked store does not check out; the live store is untouched.
    """
    if settings.url:
        raise ValueError(
            "import works on the embedded store; with VECTOR_DB_URL set, run build_vector_db instead"
        )
    target = Path(settings.dir)
    with build_lock(target):
        manifest = _import_unlocked(zip_path, settings, embedder=embedder)
    release_client(settings)
    if Path(settings.manifest_path).resolve() != (target / "manifest.json").resolve():
        write_json_atomic(Path(settings.manifest_path), manifest)
    return manifest


def _import_unlocked(zip_path: str | Path, settings: VectorSettings, *, embedder: Embedder) -> Manifest:
    """`import_zip`'s work, with the build lock already held; the live manifest carries no `files`."""
    target = Path(settings.dir)
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
        listed = json.loads((unpacked / "manifest.json").read_text(encoding="utf-8"))
        if not isinstance(listed, dict):
            raise ValueError("the zip's manifest.json is not a JSON object")
        verify_files(unpacked, listed)
        listed.pop("files")
        write_json_atomic(unpacked / "manifest.json", listed)
        check = dataclasses.replace(settings, dir=unpacked, manifest_path=unpacked / "manifest.json")
        import chromadb

        client = chromadb.PersistentClient(path=str(unpacked), settings=chroma_settings())
        try:
            store = VectorStore(settings=check, embedder=embedder, client=client)
            if not store.search_is_sized:  # exported before builds set it
                _size_search(
                    client.get_collection(settings.collection, embedding_function=None), store.count()
                )
            manifest = store.manifest
        finally:
            client.close()
        carry_over_extra_files(target, unpacked)
        swap_directory(unpacked, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
