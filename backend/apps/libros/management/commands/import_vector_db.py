"""`manage.py import_vector_db PATH.zip`: replace the store with an exported one (checked, then swapped in)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from agent.embeddings import get_embedder
from agent.errors import VectorStoreUnavailable
from agent.vector_build import import_zip


class Command(BaseCommand):
    help = "Restore the vector store from a zip made by `build_vector_db --zip` (it must match the configured model)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, help="The vector_db.zip to import.")

    def handle(self, *args, path: Path, **options) -> None:
        vector = settings.VECTOR
        try:
            manifest = import_zip(path, vector, embedder=get_embedder(vector))
        except FileNotFoundError as exc:
            raise CommandError(f"No such file: {path}") from exc
        except (ValueError, zipfile.BadZipFile) as exc:
            raise CommandError(f"Cannot import {path}: {exc}") from exc
        except VectorStoreUnavailable as exc:
            raise CommandError(f"The store in {path} is unusable: {exc.message}") from exc
        self.stdout.write(
            f"imported {manifest['document_count']} documents (built {manifest['built_at']}) into {vector.dir}"
        )
