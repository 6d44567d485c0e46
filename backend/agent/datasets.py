"""Datasets of documents for the vector store: load and validate a JSON dataset, hash its content.

Framework-free; `vector_build` builds the store from these documents.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from .types import Document

SCALARS = (str, int, float, bool)


class DatasetError(ValueError):
    """An item of the dataset is malformed. `index` is its position (0-based) in the input."""

    def __init__(self, index: int | None, problem: str):
        self.index = index
        self.problem = problem
        super().__init__(f"item {index}: {problem}" if index is not None else problem)


def load_dataset(path: str | Path) -> list[Document]:
    """Documents from a generic JSON dataset (VECTOR_DATASET_PATH).

    The file is a JSON list; each item is an object with `text` (or `page_content`), an optional `id`
    (string or integer; default: derived from the text, so inserting an item changes no other id) and
    optional `metadata` (an object). Raises `DatasetError` naming the item index and the problem.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(None, f"cannot read {path}: {exc}") from exc
    except ValueError as exc:
        raise DatasetError(None, f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise DatasetError(None, f"{path} must hold a JSON list of items, not {type(data).__name__}")
    documents = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise DatasetError(index, f"expected an object, got {type(item).__name__}")
        text = item.get("text", item.get("page_content"))
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(index, "needs a non-empty string `text` or `page_content`")
        raw_id = item.get("id")
        if raw_id is None:
            doc_id = "sha-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        elif isinstance(raw_id, str | int) and not isinstance(raw_id, bool) and str(raw_id).strip():
            doc_id = str(raw_id).strip()
        else:
            raise DatasetError(index, f"`id` must be a non-empty string or an integer, got {raw_id!r}")
        metadata = item.get("metadata", {})
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            raise DatasetError(index, f"`metadata` must be an object, got {type(metadata).__name__}")
        documents.append(Document(id=doc_id, text=text, metadata=metadata))
    return validate_documents(documents)


def validate_documents(documents: Iterable[Document]) -> list[Document]:
    """The documents as a list, checked. Raises `DatasetError` naming the first bad item's index.

    Ids are unique non-empty strings; text is non-empty; metadata maps string keys (not starting with
    "_", which is reserved for the store) to None, str, int, float, bool or a list of one such type.
    """
    out: list[Document] = []
    seen: dict[str, int] = {}
    for index, doc in enumerate(documents):
        if not isinstance(doc, Document):
            raise DatasetError(index, f"expected a Document, got {type(doc).__name__}")
        if not isinstance(doc.id, str) or not doc.id.strip():
            raise DatasetError(index, f"id must be a non-empty string, got {doc.id!r}")
        if doc.id in seen:
            raise DatasetError(index, f"duplicate id {doc.id!r} (first at item {seen[doc.id]})")
        seen[doc.id] = index
        if not isinstance(doc.text, str) or not doc.text.strip():
            raise DatasetError(index, f"text of {doc.id!r} is empty")
        if not isinstance(doc.metadata, dict):
            raise DatasetError(index, "metadata must be a dict")
        for key, value in doc.metadata.items():
            problem = _metadata_problem(key, value)
            if problem:
                raise DatasetError(index, f"metadata {key!r}: {problem}")
        out.append(doc)
    return out


def _metadata_problem(key: object, value: object) -> str | None:
    if not isinstance(key, str) or not key or key.startswith("_") or key.startswith("chroma:"):
        return "keys must be non-empty strings not starting with '_' or 'chroma:'"
    if value is None or (isinstance(value, SCALARS)):
        return None
    if isinstance(value, list):
        kinds = {bool if isinstance(v, bool) else type(v) for v in value}
        if len(kinds) <= 1 and kinds <= set(SCALARS):
            return None
        return "a list must hold values of one type (string, number or boolean)"
    return f"unsupported value of type {type(value).__name__}"


def content_hash(doc: Document, model: str) -> str:
    """sha256 of what determines a stored record: text, metadata and the embedding model id."""
    payload = json.dumps([doc.text, doc.metadata, model], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def dataset_sha256(documents: Sequence[Document]) -> str:
    """sha256 of the canonical JSON of the documents: the same catalogue hashes the same from any source."""
    digest = hashlib.sha256()
    for doc in sorted(documents, key=lambda d: d.id):
        digest.update(
            json.dumps(
                [doc.id, doc.text, doc.metadata], sort_keys=True, ensure_ascii=False, default=str
            ).encode()
        )
        digest.update(b"\n")
    return digest.hexdigest()
