""".env.example lists every environment variable the code reads."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
READERS = re.compile(
    r"""(?:(?<![.\w])(?:_int|_float|_bool|_durations|os\.getenv|get)|"""
    r"""(?:\benv|\bEnv\(\))\.(?:str|int|float|bool|list|db|choice|raw)|environ\.get)\(\s*["']([A-Z][A-Z0-9_]{2,})["']"""
)
#: Read by tooling or tests only, not by the service.
NOT_SERVICE = {
    "DJANGO_SETTINGS_MODULE",
    "FAULTS_PG_URL",
    "UP_QUERY",
    "PYTHON",
    "HOME",
    "PATH",
    "CONTENT_LENGTH",
}


def variables_read() -> set[str]:
    names: set[str] = set()
    for folder in ("backend/config", "backend/agent", "backend/apps", "scripts", "worker"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix not in {".py", ".sh"} or "tests" in path.parts:
                continue
            text = path.read_text(encoding="utf-8")
            names.update(READERS.findall(text))
            if path.suffix == ".sh":
                names.update(re.findall(r"\$\{([A-Z][A-Z0-9_]+)[:}]", text))
    return names - NOT_SERVICE


def documented() -> set[str]:
    lines = (REPO / ".env.example").read_text(encoding="utf-8").splitlines()
    return {line.split("=", 1)[0].strip() for line in lines if re.match(r"^[A-Z][A-Z0-9_]+=", line)}


def test_every_variable_read_is_in_env_example():
    missing = sorted(variables_read() - documented())
    assert missing == []


def test_the_scan_finds_the_seed_variables():
    seen = variables_read()
    for name in (
        "LLM_PROVIDER",
        "LLM_COST_MODE",
        "LLM_ALLOW_BYO_KEY",
        "VECTOR_DB_DIR",
        "DATABASE_URL",
        "SECRET_KEY",
    ):
        assert name in seen


def test_every_variable_read_is_in_the_readme_table():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = sorted(name for name in variables_read() if f"`{name}`" not in readme)
    assert missing == []
