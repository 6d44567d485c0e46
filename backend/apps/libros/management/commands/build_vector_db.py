"""`manage.py build_vector_db [--dataset PATH] [--zip [PATH]] [--force]`: build or update the vector store."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from agent.datasets import DatasetError, load_dataset
from agent.embeddings import get_embedder
from agent.errors import VectorStoreUnavailable
from agent.vector_build import build_vector_db, export_zip
from apps.libros.catalogue import libro_documents
from apps.libros.models import Libro


def require_catalogue_table() -> None:
    """Refuse with the next step to take when the database has no catalogue table (not migrated yet)."""
    table = Libro._meta.db_table
    if table not in connection.introspection.table_names():
        raise CommandError(
            f"The database has no catalogue table ({table}) yet: run `manage.py migrate`, then "
            "`manage.py loaddata libros_prueba` (or your own catalogue), then build_vector_db again. "
            "`make up` does all three."
        )


class Command(BaseCommand):
    help = (
        "Build the vector store from the libros table (or a JSON dataset), incrementally: only new or changed "
        "documents are embedded. Writes manifest.json next to the store."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dataset",
            type=Path,
            help="A JSON list of {text|page_content, id?, metadata?} instead of the libros table (default: VECTOR_DATASET_PATH).",
        )
        parser.add_argument(
            "--zip",
            nargs="?",
            const="",
            default=None,
            metavar="PATH",
            help="Also export the store as a zip holding vector_db/ (default path: vector_db.zip beside the store).",
        )
        parser.add_argument(
            "--force", action="store_true", help="Re-embed everything instead of applying differences."
        )
        parser.add_argument("--no-progress", action="store_true", help="No progress bar even on a terminal.")

    def handle(
        self, *args, dataset: Path | None, zip: str | None, force: bool, no_progress: bool, **options
    ) -> None:
        vector = settings.VECTOR
        dataset = dataset or vector.dataset_path
        try:
            if dataset:
                documents = load_dataset(dataset)
                source = f"file:{dataset}"
            else:
                require_catalogue_table()
                documents = libro_documents()
                source = "table:libros.libro"
            if not documents:
                raise CommandError(
                    "Nothing to index: the catalogue is empty (load it with `manage.py loaddata libros_prueba`)."
                )
            manifest = build_vector_db(
                documents,
                settings=vector,
                embedder=get_embedder(vector),
                source=source,
                progress=False if no_progress else None,
                force=force,
            )
        except DatasetError as exc:
            raise CommandError(f"Malformed dataset {dataset}: {exc}") from exc
        verbose = options["verbosity"] > 0
        mode = "incremental" if manifest["incremental"] else "full"
        if verbose:
            self.stdout.write(
                f"{mode} build of {manifest['document_count']} documents in {manifest['build_seconds']:.1f} s "
                f"(added {manifest['added']}, updated {manifest['updated']}, deleted {manifest['deleted']}, "
                f"unchanged {manifest['unchanged']}); manifest: {vector.manifest_path}"
            )
        if zip is not None:
            out = Path(zip) if zip else Path(vector.dir).parent / "vector_db.zip"
            try:
                export_zip(vector, out)
            except VectorStoreUnavailable as exc:
                raise CommandError(exc.message) from exc
            if verbose:
                self.stdout.write(f"exported {out}")
