"""Helpers shared by the vector store tests: a network guard, fake and counting embedders, small datasets."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from agent.types import Document
from agent.vector_config import VectorSettings


class NetworkAttempt(AssertionError):
    """Raised by `no_network()` when code tries to reach a non-loopback address."""


def _is_loopback(address: object) -> bool:
    if isinstance(address, str | bytes):  # AF_UNIX paths are local
        return True
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def no_network() -> Iterator[list[object]]:
    """Fail loudly on any attempt to reach the network from Python, and ask hub clients to stay offline.

    `socket.connect`/`connect_ex` to a non-loopback address and name resolution of any other host
    raise `NetworkAttempt`. Yields the list of blocked attempts. (Native code that opens its own
    sockets is not covered; the build was also run under `unshare -n`, see docs/benchmarks.md.)
    """
    attempts: list[object] = []
    real_connect, real_connect_ex, real_getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def guarded_connect(sock: socket.socket, address: object) -> None:
        if not _is_loopback(address):
            attempts.append(address)
            raise NetworkAttempt(f"network access attempted: connect to {address!r}")
        return real_connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: object) -> int:
        if not _is_loopback(address):
            attempts.append(address)
            raise NetworkAttempt(f"network access attempted: connect_ex to {address!r}")
        return real_connect_ex(sock, address)

    def guarded_getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host not in (None, "localhost") and not _is_loopback((host,)):
            attempts.append(host)
            raise NetworkAttempt(f"network access attempted: resolve {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    saved = {key: os.environ.get(key) for key in offline}
    os.environ.update(offline)
    socket.socket.connect = guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = guarded_getaddrinfo  # type: ignore[assignment]
    try:
        yield attempts
    finally:
        socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = real_getaddrinfo
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class FakeEmbedder:
    """A fast deterministic bag-of-words embedder: texts sharing words are similar. No model involved."""

    version = "1"

    def __init__(self, name: str = "fake-bow", dim: int = 64):
        self.name = name
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def _vector(self, text: str) -> np.ndarray:
        vector = np.zeros(self._dim, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            digest = hashlib.sha256(word.encode()).digest()
            vector[int.from_bytes(digest[:4], "little") % self._dim] += 1.0
        vector[0] += 0.01  # no zero vector for an empty bag
        return vector / np.linalg.norm(vector)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self._vector(text) for text in texts], dtype=np.float32).reshape(
            len(texts), self._dim
        )

    def embed_query(self, text: str) -> np.ndarray:
        return self._vector(text)


class CountingEmbedder:
    """Wraps an embedder and counts the documents it was asked to embed."""

    def __init__(self, inner: object):
        self.inner = inner
        self.name = inner.name  # type: ignore[attr-defined]
        self.version = inner.version  # type: ignore[attr-defined]
        self.documents_embedded = 0
        self.calls = 0

    @property
    def dim(self) -> int:
        return self.inner.dim  # type: ignore[attr-defined]

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.documents_embedded += len(texts)
        return self.inner.embed_documents(texts)  # type: ignore[attr-defined]

    def embed_query(self, text: str) -> np.ndarray:
        return self.inner.embed_query(text)  # type: ignore[attr-defined]


def vector_settings(tmp_path: Path, **env: str) -> VectorSettings:
    """Settings for a store under `tmp_path/vector_db` (environment overrides in `env`)."""
    return VectorSettings.from_env({"VECTOR_DB_DIR": str(tmp_path / "vector_db"), **env}, repo_dir=tmp_path)


BOOKS = [
    (
        "1",
        "Moby-Dick",
        "Herman Melville",
        1851,
        "en",
        ["literary_fiction", "adventure"],
        "A captain hunts the white whale across the oceans.",
    ),
    (
        "2",
        "Cien años de soledad",
        "Gabriel García Márquez",
        1967,
        "es",
        ["literary_fiction"],
        "La familia Buendía en el pueblo de Macondo.",
    ),
    (
        "3",
        "The Hobbit",
        "J. R. R. Tolkien",
        1937,
        "en",
        ["fantasy", "children"],
        "A hobbit, a wizard and dwarves against a dragon.",
    ),
    ("4", "Dune", "Frank Herbert", 1965, "en", ["science_fiction"], "A desert planet, spice and a prophecy."),
    (
        "5",
        "La sombra del viento",
        "Carlos Ruiz Zafón",
        2001,
        "es",
        ["mystery", "literary_fiction"],
        "Un niño y un libro maldito en Barcelona.",
    ),
    (
        "6",
        "Dracula",
        "Bram Stoker",
        1897,
        "en",
        ["horror"],
        "A count, a castle in Transylvania, and vampires in London.",
    ),
    (
        "7",
        "Como agua para chocolate",
        "Laura Esquivel",
        1989,
        "es",
        ["romance", "cooking"],
        "Recetas, amor y una familia en México.",
    ),
    (
        "8",
        "El corazón de las tinieblas",
        "Joseph Conrad",
        1899,
        "en",
        ["literary_fiction"],
        "Un viaje por el río hacia el corazón de África.",
    ),
    ("9", "Café Society", "Ann Example", 2010, "en", ["romance"], "Love and coffee in a small town café."),
    (
        "10",
        "A Wizard of Earthsea",
        "Ursula K. Le Guin",
        1968,
        "en",
        ["fantasy"],
        "A young wizard and the shadow he unleashed.",
    ),
]


def book_documents(rows: Sequence[tuple] = BOOKS) -> list[Document]:
    """The small test catalogue as `Document`s (metadata like the libros table gives)."""
    return [
        Document(
            id=doc_id,
            text=f"{title}. {author}. {', '.join(genres)}. {synopsis}",
            metadata={
                "title": title,
                "author": author,
                "year": year,
                "language": language,
                "genres": genres,
                "pages": 100 + int(doc_id),
                "synopsis": synopsis,
            },
        )
        for doc_id, title, author, year, language, genres, synopsis in rows
    ]
