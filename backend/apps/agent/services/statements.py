"""The worker's per-job statements, written once, with values prepared by the model's fields.

A job's claim is an UPDATE and a SELECT of the row; its finish an UPDATE of eleven fields and an INSERT of
its trace rows. Through the ORM, Django
builds and compiles them again for every job (about half of the claim's and the finish's CPU, measured in
docs/benchmarks.md), inside the write transaction, i.e. while SQLite's write lock is held. These helpers
write the same SQL once per database vendor and prepare each value with the field's own
`get_db_prep_save` / `get_db_prep_value`, as the ORM's compilers do: JSON, decimals, datetimes and UUIDs
are stored exactly as `QuerySet.update()` and `bulk_create()` store them (tests compare the rows). Values
are prepared before the caller opens its transaction; only the execution happens inside it.

Identifiers come from the model's metadata, quoted by the backend; every value is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.db import connection, models

from apps.agent.models import AgentJob, JobStatus

Prepared = tuple[str, list[Any]]


def _column(model: type[models.Model], name: str) -> str:
    return connection.ops.quote_name(model._meta.get_field(name).column)


class ConditionalUpdate:
    """`model.objects.filter(<where fields> = …).update(<set fields> = …)` as one prepared statement."""

    def __init__(self, model: type[models.Model], set_fields: Sequence[str], where_fields: Sequence[str]):
        self.model = model
        self.set_fields = [model._meta.get_field(name) for name in set_fields]
        self.where_fields = [model._meta.get_field(name) for name in where_fields]
        self._sql: dict[str, str] = {}

    def _text(self) -> str:
        sql = self._sql.get(connection.vendor)
        if sql is None:
            table = connection.ops.quote_name(self.model._meta.db_table)
            sets = ", ".join(f"{_column(self.model, f.name)} = %s" for f in self.set_fields)
            where = " AND ".join(f"{_column(self.model, f.name)} = %s" for f in self.where_fields)
            sql = self._sql[connection.vendor] = f"UPDATE {table} SET {sets} WHERE {where}"  # noqa: S608
        return sql

    def prepare(self, values: dict[str, Any], where: dict[str, Any]) -> Prepared:
        """The statement and its parameters for these values (every set and where field must be given)."""
        params = [field.get_db_prep_save(values[field.name], connection) for field in self.set_fields]
        params += [field.get_db_prep_value(where[field.name], connection) for field in self.where_fields]
        return self._text(), params


class BulkInsert:
    """`model.objects.bulk_create(rows)` of the given fields as one prepared multi-row INSERT."""

    def __init__(self, model: type[models.Model], fields: Sequence[str]):
        self.model = model
        self.fields = [model._meta.get_field(name) for name in fields]
        self._sql: dict[tuple[str, int], str] = {}

    def prepare(self, rows: Iterable[dict[str, Any]]) -> Prepared | None:
        """The statement and its parameters for these rows (dicts by field name), or None for no rows."""
        params: list[Any] = []
        count = 0
        for row in rows:
            params += [field.get_db_prep_save(row[field.name], connection) for field in self.fields]
            count += 1
        if not count:
            return None
        key = (connection.vendor, count)
        sql = self._sql.get(key)
        if sql is None:
            table = connection.ops.quote_name(self.model._meta.db_table)
            columns = ", ".join(_column(self.model, f.name) for f in self.fields)
            row_text = "(" + ", ".join(["%s"] * len(self.fields)) + ")"
            sql = self._sql[key] = f"INSERT INTO {table} ({columns}) VALUES " + ", ".join([row_text] * count)  # noqa: S608
        return sql, params


def execute(statement: Prepared) -> int:
    """Run a prepared statement on the default connection; returns the rows it changed."""
    sql, params = statement
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


# --- The claim --------------------------------------------------------------------------------------

_CLAIM_SQL: dict[str, str] = {}
_BY_ID_SQL: dict[str, str] = {}


def claim_queued(job_id: Any, now: Any, *, max_attempts: int) -> bool:
    """`AgentJob.objects.filter(id=job_id, status=queued, attempts__lt=max_attempts)
    .update(status=running, attempts=F("attempts") + 1, heartbeat_at=now, started_at=now) == 1`."""
    sql = _CLAIM_SQL.get(connection.vendor)
    if sql is None:
        table = connection.ops.quote_name(AgentJob._meta.db_table)
        status, attempts, heartbeat, started, pk = (
            _column(AgentJob, name) for name in ("status", "attempts", "heartbeat_at", "started_at", "id")
        )
        sql = _CLAIM_SQL[connection.vendor] = " ".join(
            [
                f"UPDATE {table} SET {status} = %s, {attempts} = {attempts} + 1,",  # noqa: S608
                f"{heartbeat} = %s, {started} = %s",
                f"WHERE {pk} = %s AND {status} = %s AND {attempts} < %s",
            ]
        )
    at = AgentJob._meta.get_field("started_at").get_db_prep_value(now, connection)
    pk = AgentJob._meta.pk.get_db_prep_value(job_id, connection)
    params = [JobStatus.RUNNING.value, at, at, pk, JobStatus.QUEUED.value, max_attempts]
    return execute((sql, params)) == 1


def job_by_id(job_id: Any) -> AgentJob:
    """`AgentJob.objects.get(id=job_id)` for a row known to exist: the ORM's own SELECT, compiled once."""
    sql = _BY_ID_SQL.get(connection.vendor)
    if sql is None:
        sql = _BY_ID_SQL[connection.vendor] = AgentJob.objects.filter(pk=job_id).query.sql_with_params()[0]
    return next(iter(AgentJob.objects.raw(sql, [AgentJob._meta.pk.get_db_prep_value(job_id, connection)])))
