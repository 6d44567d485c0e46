"""`manage.py vector_search "<query>" --k 5 --json [--exact] [filters]`: what retrieval answers, for operators."""

from __future__ import annotations

import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from agent.errors import InvalidQuery, VectorStoreUnavailable
from agent.exact_search import exact_search
from agent.types import Filters
from agent.vector_store import open_store
from apps.libros.catalogue import libro_documents


class Command(BaseCommand):
    help = "Search the vector store (or, with --exact, the catalogue table by keywords) and print the hits."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("query")
        parser.add_argument("--k", type=int, default=5, help="How many hits (default 5).")
        parser.add_argument(
            "--json", action="store_true", help="Print a JSON list of {id, title, author, score}."
        )
        parser.add_argument(
            "--exact", action="store_true", help="Use the degraded path: keyword search, no vector store."
        )
        parser.add_argument("--language", help="Original language, ISO 639-1 (es, en, ...).")
        parser.add_argument(
            "--genre", action="append", default=[], help="Genre slug; repeat for any of several."
        )
        parser.add_argument("--year-min", type=int)
        parser.add_argument("--year-max", type=int)

    def handle(self, *args, query: str, k: int, exact: bool, **options) -> None:
        filters = Filters(
            language=options["language"],
            genres=tuple(options["genre"]),
            year_min=options["year_min"],
            year_max=options["year_max"],
        )
        try:
            if exact:
                hits = exact_search(query, k, filters, libro_documents)
            else:
                hits = open_store(settings.VECTOR).retrieve(query, k, filters)
        except (VectorStoreUnavailable, InvalidQuery) as exc:
            raise CommandError(exc.message) from exc
        rows = [{"id": hit.id, "title": hit.title, "author": hit.author, "score": hit.score} for hit in hits]
        if options["json"]:
            self.stdout.write(json.dumps(rows, ensure_ascii=False))
            return
        for rank, row in enumerate(rows, 1):
            self.stdout.write(
                f"{rank:>2}. {row['score']:.4f}  [{row['id']}] {row['title']} ({row['author']})"
            )
