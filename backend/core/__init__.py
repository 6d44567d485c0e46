"""Project-wide, framework-free building blocks: errors, environment parsing and small shared helpers.

Imported by the agent core (`agent/`), the Django apps (`apps/`) and the settings (`config/`); imports
none of them, nor Django, DRF or Celery (the import-linter contract in pyproject.toml checks it).
"""
