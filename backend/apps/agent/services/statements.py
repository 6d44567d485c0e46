"""The worker's per-job statements, written once, with values prepared by the model's fields.

A job's claim is an UPDATE and a SELECT of the row; its finish an UPDATE of eleven fields and an INSERT of
its trace rows. Through the ORM, Django builds and compiles them again for every job (about half of the
claim's and the finish's CPU, measured in docs/benchmarks.md), inside the write transaction, i.e. while
SQLite's write lock is held. These helpers write the same SQL once per database vendor and set of field
names (the caller's dicts name the fields) and prepare each value with the field's own
`get_db_prep_save` / `get_db_prep_value`, as the ORM's compilers do: JSON, decimals, datetimes and UUIDs
are stored exactly as `QuerySet.update()` and `bulk_create()` store them (tests compare the rows). Values
are prepared before the caller opens its transaction; only the execution happens inside it.

Identifiers come from the model's metadata, quoted by the backend; every value is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import connection, models

from apps.agent.models import AgentJob, JobStatus

Prepared = tuple[str, list[Any]]

#: SQL text by statement and database vendor (and the field names and row count): written on first use.
_SQL: dict[tuple[Any, ...], str] = {}


def _column(model: type[models.Model], name: str) -> str:
    return connection.ops.quote_name(model._meta.get_field(name).column)


def conditional_update(model: type[models.Model], values: dict[str, Any], where: dict[str, Any]) -> Prepared:
    """`model.objects.filter(**where).update(**values)` (plain equalities) as a prepared statement."""
    key = (model, connection.vendor, tuple(values), tuple(where))
    sql = _SQL.get(key)
    if sql is None:
        table = connection.ops.quote_name(model._meta.db_table)
        sets = ", ".join(f"{_column(model, name)} = %s" for name in values)
        conditions = " AND ".join(f"{_column(model, name)} = %s" for name in where)
        sql = _SQL[key] = f"UPDATE {table} SET {sets} WHERE {conditions}"  # noqa: S608
    field = model._meta.get_field
    params = [field(name).get_db_prep_save(value, connection) for name, value in values.items()]
    params += [field(name).get_db_prep_value(value, connection) for name, value in where.items()]
    return sql, params


def bulk_insert(model: type[models.Model], rows: Iterable[dict[str, Any]]) -> Prepared | None:
    """`model.objects.bulk_create(...)` of `rows` (dicts by field name, all with the same names) as one
    prepared multi-row INSERT, or None for no rows."""
    rows = list(rows)
    if not rows:
        return None
    names = tuple(rows[0])
    fields = [model._meta.get_field(name) for name in names]
    params: list[Any] = []
    for row in rows:
        if tuple(row) != names:
            raise ValueError(f"every row must give the fields {names}, got {tuple(row)}")
        params += [field.get_db_prep_save(row[field.name], connection) for field in fields]
    key = (model, connection.vendor, names, len(rows))
    sql = _SQL.get(key)
    if sql is None:
        table = connection.ops.quote_name(model._meta.db_table)
        columns = ", ".join(_column(model, name) for name in names)
        row_text = "(" + ", ".join(["%s"] * len(names)) + ")"
        sql = _SQL[key] = f"INSERT INTO {table} ({columns}) VALUES " + ", ".join([row_text] * len(rows))  # noqa: S608
    return sql, params


def execute(statement: Prepared) -> int:
    """Run a prepared statement on the default connection; returns the rows it changed."""
    sql, params = statement
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


# --- The claim --------------------------------------------------------------------------------------


def claim_queued(job_id: Any, now: Any, *, max_attempts: int) -> bool:
    """`AgentJob.objects.filter(id=job_id, status=queued, attempts__lt=max_attempts)
    .update(status=running, attempts=F("attempts") + 1, heartbeat_at=now, started_at=now) == 1`."""
    key = ("claim", connection.vendor)
    sql = _SQL.get(key)
    if sql is None:
        table = connection.ops.quote_name(AgentJob._meta.db_table)
        status, attempts, heartbeat, started, pk = (
            _column(AgentJob, name) for name in ("status", "attempts", "heartbeat_at", "started_at", "id")
        )
        sql = _SQL[key] = " ".join(
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
    key = ("job by id", connection.vendor)
    sql = _SQL.get(key)
    if sql is None:
        sql = _SQL[key] = AgentJob.objects.filter(pk=job_id).query.sql_with_params()[0]
    return next(iter(AgentJob.objects.raw(sql, [AgentJob._meta.pk.get_db_prep_value(job_id, connection)])))
