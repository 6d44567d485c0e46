"""The catalogue as the agent core sees it: `Libro` rows mapped to framework-free `Document`s (a selector)."""

from __future__ import annotations

from django.db.models import QuerySet

from agent.types import Document

from .models import Libro


def libro_document(libro: Libro) -> Document:
    """One book as a `Document`: id is the primary key, text is what gets embedded, metadata is what filters and shows."""
    return Document(
        id=str(libro.pk),
        text=libro.as_document_text(),
        metadata={
            "title": libro.title,
            "author": libro.author,
            "year": libro.year,
            "language": libro.language,
            "genres": list(libro.genres or []),
            "pages": libro.pages,
            "synopsis": libro.synopsis,
        },
    )


def libro_documents(queryset: QuerySet[Libro] | None = None) -> list[Document]:
    """Every book of `queryset` (default: the whole table) as `Document`s, ordered by id."""
    queryset = Libro.objects.all() if queryset is None else queryset
    return [libro_document(libro) for libro in queryset.order_by("id")]
