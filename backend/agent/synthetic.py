"""Synthetic catalogues and vectors for benchmarks: seeded, reproducible, no network, no model.

`generate_catalogue(n, seed=s)` gives the same n items for the same seed on every machine (it uses
only `random.Random(seed)`), shaped like a VECTOR_DATASET_PATH file. `clustered_vectors()` gives
unit vectors grouped around random centres, closer to real embeddings than uniform noise (which
makes every neighbour almost equally far and flatters or ruins approximate search at random).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from .types import Document

GENRES = {
    "fantasy": (
        ["dragon", "kingdom", "wizard", "sword", "prophecy", "forest"],
        ["dragón", "reino", "mago", "espada", "profecía", "bosque"],
    ),
    "science_fiction": (
        ["starship", "colony", "android", "planet", "signal", "empire"],
        ["nave", "colonia", "androide", "planeta", "señal", "imperio"],
    ),
    "mystery": (
        ["detective", "murder", "alibi", "inspector", "secret", "letter"],
        ["detective", "asesinato", "coartada", "inspector", "secreto", "carta"],
    ),
    "horror": (
        ["ghost", "curse", "crypt", "fog", "scream", "mansion"],
        ["fantasma", "maldición", "cripta", "niebla", "grito", "mansión"],
    ),
    "romance": (
        ["love", "wedding", "letters", "summer", "heart", "rival"],
        ["amor", "boda", "cartas", "verano", "corazón", "rival"],
    ),
    "history": (
        ["war", "revolution", "empire", "treaty", "king", "archive"],
        ["guerra", "revolución", "imperio", "tratado", "rey", "archivo"],
    ),
    "science": (
        ["evolution", "atoms", "universe", "genes", "climate", "brain"],
        ["evolución", "átomos", "universo", "genes", "clima", "cerebro"],
    ),
    "poetry": (
        ["sea", "night", "memory", "silence", "moon", "garden"],
        ["mar", "noche", "memoria", "silencio", "luna", "jardín"],
    ),
    "children": (
        ["rabbit", "school", "friends", "balloon", "island", "puppy"],
        ["conejo", "escuela", "amigos", "globo", "isla", "cachorro"],
    ),
    "cooking": (
        ["bread", "spices", "kitchen", "recipes", "market", "soup"],
        ["pan", "especias", "cocina", "recetas", "mercado", "sopa"],
    ),
    "philosophy": (
        ["freedom", "truth", "virtue", "reason", "death", "justice"],
        ["libertad", "verdad", "virtud", "razón", "muerte", "justicia"],
    ),
    "literary_fiction": (
        ["family", "city", "exile", "village", "marriage", "childhood"],
        ["familia", "ciudad", "exilio", "pueblo", "matrimonio", "infancia"],
    ),
}
FIRST = [
    "Ana",
    "Luis",
    "Marta",
    "John",
    "Emily",
    "Carlos",
    "Sofía",
    "Peter",
    "Lucía",
    "Hugo",
    "Clara",
    "Omar",
]
LAST = ["García", "Smith", "Fernández", "Brown", "López", "Taylor", "Martín", "Wilson", "Ruiz", "Clarke"]
TEMPLATES = {
    "en": "A story of {a} and {b}: when the {c} appears, {name} must face the {d} before the {e} is lost.",
    "es": "Una historia de {a} y {b}: cuando aparece {c}, {name} debe enfrentarse a {d} antes de perder {e}.",
}
TITLES = {"en": "The {a} of the {b}", "es": "El {a} de {b}"}


def generate_catalogue(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """`n` synthetic books as dataset items `{id, text, metadata}`; ids are "syn-0" .. "syn-(n-1)"."""
    rng = random.Random(seed)
    genre_names = sorted(GENRES)
    items = []
    for index in range(n):
        language = "es" if rng.random() < 0.4 else "en"
        genres = rng.sample(genre_names, k=rng.choice((1, 1, 2)))
        words = (
            GENRES[genres[0]][0 if language == "en" else 1] + GENRES[genres[-1]][0 if language == "en" else 1]
        )
        a, b, c, d, e = rng.sample(words, k=5)
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        title = TITLES[language].format(a=a.capitalize(), b=b)
        synopsis = TEMPLATES[language].format(a=a, b=b, c=c, d=d, e=e, name=rng.choice(FIRST))
        metadata = {
            "title": title,
            "author": name,
            "year": rng.randint(1800, 2024),
            "language": language,
            "genres": genres,
            "pages": rng.randint(90, 900),
            "synopsis": synopsis,
        }
        text = f"{title}. {name}. {', '.join(genres)}. {synopsis}"
        items.append({"id": f"syn-{index}", "text": text, "metadata": metadata})
    return items


def synthetic_documents(n: int, *, seed: int = 0) -> list[Document]:
    """`generate_catalogue` as `Document`s."""
    return [
        Document(id=item["id"], text=item["text"], metadata=item["metadata"])
        for item in generate_catalogue(n, seed=seed)
    ]


def clustered_vectors(
    n: int, dim: int = 384, *, clusters: int = 64, spread: float = 0.35, seed: int = 0
) -> np.ndarray:
    """`n` float32 unit vectors of `dim`, each a random centre (one of `clusters`) plus Gaussian noise of `spread`."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, clusters, size=n)
    noise = rng.normal(scale=spread / np.sqrt(dim), size=(n, dim)).astype(np.float32)
    vectors = centres[labels] + noise
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
