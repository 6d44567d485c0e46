"""`manage.py generate_catalogue --count N [--seed S] --out PATH`: a synthetic dataset for benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandParser

from agent.synthetic import generate_catalogue


class Command(BaseCommand):
    help = (
        "Write a reproducible synthetic catalogue as a VECTOR_DATASET_PATH JSON file (same seed, same file)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, default=100_000)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--out", type=Path, required=True)

    def handle(self, *args, count: int, seed: int, out: Path, **options) -> None:
        items = generate_catalogue(count, seed=seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
        self.stdout.write(f"wrote {len(items)} items (seed {seed}) to {out}")
