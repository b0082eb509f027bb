"""The one bulk-write path of the store: rows in, one statement per batch, idempotent.

Statements are plain SQL built once per (table, columns, conflict rule) and cached, so a batch
costs no SQLAlchemy compilation. Small batches go through psycopg2's `execute_values` (one
multi-row INSERT per page); large ones are COPYed into a temporary staging table and moved with
one `INSERT .. SELECT .. ON CONFLICT`. Either way:
- `update_columns` empty: a row whose key exists is left alone (`DO NOTHING`);
- otherwise it is updated only where a value really changes (`IS DISTINCT FROM`), so re-running
  a partition with the same data touches no row (its xmin stays);
- the result counts the rows this statement inserted or changed (not rows another writer stored
  first), and carries the RETURNING columns asked for.
Everything happens in the caller's transaction.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator, Sequence

import psycopg2.errors
import psycopg2.extras
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from resources.store import json_codec

# Above this many rows, COPY + staging is used instead of a multi-row INSERT. A threshold set when the
# bulk path was written; no benchmark in bench/ measures it alone (bench_scores.py and bench_replay.py
# measure the writes it serves, end to end).
COPY_MIN_ROWS = 2000
_PAGE_ROWS = 1000
_COPY_CHUNK_ROWS = 1000
_COPY_SPECIALS = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


@dataclass(frozen=True)
class BulkResult:
    written: int  # rows inserted or changed by this statement
    returned: list[tuple]  # the RETURNING columns of those rows


def _qualified(table: sa.Table) -> str:
    return f'"{table.schema}"."{table.name}"' if table.schema else f'"{table.name}"'


def _quote(names: Sequence[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)


def _conflict_clause(table: sa.Table, conflict: Sequence[str], update: Sequence[str]) -> str:
    if not update:
        return f"ON CONFLICT ({_quote(conflict)}) DO NOTHING"
    assignments = ", ".join(f'"{c}" = excluded."{c}"' for c in update)
    if len(update) == 1:
        changed = f'stored."{update[0]}" IS DISTINCT FROM excluded."{update[0]}"'
    else:
        stored = ", ".join(f'stored."{c}"' for c in update)
        incoming = ", ".join(f'excluded."{c}"' for c in update)
        changed = f"ROW({stored}) IS DISTINCT FROM ROW({incoming})"
    return f"ON CONFLICT ({_quote(conflict)}) DO UPDATE SET {assignments} WHERE {changed}"


def _returning_clause(returning: Sequence[str]) -> str:
    # Always return something: the number of rows returned is the number written.
    return "RETURNING " + (", ".join(f'stored."{c}"' for c in returning) if returning else "1")


@functools.lru_cache(maxsize=256)
def _values_statement(table: sa.Table, columns: tuple[str, ...], conflict: tuple[str, ...], update: tuple[str, ...],
                      returning: tuple[str, ...]) -> str:
    return (
        f"INSERT INTO {_qualified(table)} AS stored ({_quote(columns)}) VALUES %s "
        f"{_conflict_clause(table, conflict, update)} {_returning_clause(returning)}"
    )


@functools.lru_cache(maxsize=256)
def _stage_statements(table: sa.Table, columns: tuple[str, ...], conflict: tuple[str, ...], update: tuple[str, ...],
                      returning: tuple[str, ...]) -> tuple[str, str, str]:
    dialect = postgresql.dialect()
    stage = f'pg_temp."stage_{table.name}"'
    definitions = ", ".join(f'"{c}" {table.c[c].type.compile(dialect=dialect)}' for c in columns)
    # Created once per transaction and dropped at its end; a later batch empties it in place.
    create = f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ({definitions}) ON COMMIT DROP; TRUNCATE {stage}"
    copy = f"COPY {stage} ({_quote(columns)}) FROM STDIN"
    move = (
        f"INSERT INTO {_qualified(table)} AS stored ({_quote(columns)}) SELECT {_quote(columns)} FROM {stage} "
        f"{_conflict_clause(table, conflict, update)} {_returning_clause(returning)}"
    )
    return create, copy, move


@functools.lru_cache(maxsize=256)
def _json_columns(table: sa.Table, columns: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(i for i, c in enumerate(columns) if isinstance(table.c[c].type, postgresql.JSONB))


def copy_text(value: Any) -> str:
    """One field in COPY's text format."""
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store takes timezone-aware UTC only")
        return value.isoformat()
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity"))
    if isinstance(value, (dict, list)):
        return json_codec.dumps(value).translate(_COPY_SPECIALS)
    return str(value).translate(_COPY_SPECIALS)


def _text_field(value: Any) -> str:
    return "\\N" if value is None else str(value).translate(_COPY_SPECIALS)


def _json_field(value: Any) -> str:
    return "\\N" if value is None else json_codec.dumps(value).translate(_COPY_SPECIALS)


def _time_field(value: Any) -> str:
    if value is None:
        return "\\N"
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the store takes timezone-aware UTC only")
    return value.isoformat()


def _number_field(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return repr(value) if isinstance(value, float) else str(int(value))


def _bool_field(value: Any) -> str:
    return "\\N" if value is None else ("t" if value else "f")


@functools.lru_cache(maxsize=256)
def _field_formatters(table: sa.Table, columns: tuple[str, ...]) -> tuple:
    """One formatter per column, chosen once from its type (no per-value type dispatch)."""
    formatters = []
    for name in columns:
        kind = table.c[name].type
        if isinstance(kind, postgresql.JSONB):
            formatters.append(_json_field)
        elif isinstance(kind, sa.DateTime):
            formatters.append(_time_field)
        elif isinstance(kind, sa.Boolean):
            formatters.append(_bool_field)
        elif isinstance(kind, (sa.Float, sa.Integer, sa.BigInteger)):
            formatters.append(_number_field)
        else:
            formatters.append(_text_field)
    return tuple(formatters)


class _CopyReader:
    """A file-like source for copy_expert, formatting rows a chunk per read()."""

    def __init__(self, rows: Sequence[tuple], formatters: tuple):
        self._chunks = self._format(rows, formatters)

    def read(self, size: int = -1) -> str:  # psycopg2 passes a size; the chunks are ours
        return next(self._chunks, "")

    readline = read

    @staticmethod
    def _format(rows: Sequence[tuple], formatters: tuple) -> Iterator[str]:
        for offset in range(0, len(rows), _COPY_CHUNK_ROWS):
            yield "".join(
                "\t".join([f(v) for f, v in zip(formatters, row)]) + "\n"
                for row in rows[offset : offset + _COPY_CHUNK_ROWS]
            )


class _LineReader:
    """copy_expert's source for text a caller formats itself (a hot path's own formatter)."""

    def __init__(self, chunks: Iterator[str]):
        self._chunks = chunks

    def read(self, size: int = -1) -> str:
        return next(self._chunks, "")

    readline = read


def copy_field(value: str | None) -> str:
    """A text field in COPY's text format."""
    return "\\N" if value is None else value.translate(_COPY_SPECIALS)


def bulk_upsert(
    connection: sa.Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Sequence[tuple],
    conflict_columns: Sequence[str],
    update_columns: Sequence[str] = (),
    returning: Sequence[str] = (),
) -> BulkResult:
    """Write `rows` (tuples in `columns` order) into `table`; see the module docstring."""
    if not rows:
        return BulkResult(0, [])
    key = (table, tuple(columns), tuple(conflict_columns), tuple(update_columns), tuple(returning))
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        if len(rows) >= COPY_MIN_ROWS and not connection.connection.dbapi_connection.autocommit:
            create, copy, move = _stage_statements(*key)
            cursor.execute(create)
            cursor.copy_expert(copy, _CopyReader(rows, _field_formatters(table, tuple(columns))))
            cursor.execute(move)
            returned = cursor.fetchall()
        else:
            json_positions = _json_columns(table, tuple(columns))
            if json_positions:
                rows = [
                    tuple(psycopg2.extras.Json(v, dumps=json_codec.dumps) if i in json_positions and v is not None else v
                          for i, v in enumerate(row))
                    for row in rows
                ]
            returned = psycopg2.extras.execute_values(
                cursor, _values_statement(*key), rows, page_size=_PAGE_ROWS, fetch=True
            )
    finally:
        cursor.close()
    return BulkResult(len(returned), [tuple(r) for r in returned] if returning else [])


def bulk_upsert_dicts(
    connection: sa.Connection,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    conflict_columns: Sequence[str],
    update_columns: Sequence[str] = (),
    returning: Sequence[str] = (),
) -> BulkResult:
    """bulk_upsert for rows given as dicts with the same keys."""
    if not rows:
        return BulkResult(0, [])
    columns = tuple(rows[0])
    return bulk_upsert(
        connection, table, columns, [tuple(row[c] for c in columns) for row in rows],
        conflict_columns, update_columns, returning,
    )


def bulk_update(
    connection: sa.Connection, table: sa.Table, key_column: str, columns: Sequence[str], rows: Sequence[tuple],
    extra_set: str = "",
) -> int:
    """UPDATE `table` SET `columns` FROM the given rows ((key, *values) tuples), one statement per
    page: `UPDATE .. FROM (VALUES ..)`, not a statement per row. `extra_set` adds raw SET clauses
    (e.g. a JSONB key removal). Returns the rows updated."""
    if not rows:
        return 0
    dialect = postgresql.dialect()
    names = (key_column, *columns)
    casts = ", ".join(f"%s::{table.c[name].type.compile(dialect=dialect)}" for name in names)
    assignments = ", ".join([*(f'"{c}" = v."{c}"' for c in columns), *([extra_set] if extra_set else [])])
    statement = (
        f"UPDATE {_qualified(table)} AS stored SET {assignments} FROM (VALUES %s) AS v({_quote(names)}) "
        f'WHERE stored."{key_column}" = v."{key_column}"'
    )
    json_positions = _json_columns(table, names)
    prepared = [
        tuple(psycopg2.extras.Json(v, dumps=json_codec.dumps) if i in json_positions and v is not None else v
              for i, v in enumerate(row))
        for row in rows
    ]
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        updated = 0
        for offset in range(0, len(prepared), _PAGE_ROWS):
            psycopg2.extras.execute_values(cursor, statement, prepared[offset : offset + _PAGE_ROWS],
                                           template=f"({casts})", page_size=_PAGE_ROWS)
            updated += cursor.rowcount
    finally:
        cursor.close()
    return updated


def insert_new(
    connection: sa.Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[tuple],
    conflict_columns: Sequence[str], copy_lines: Callable[[Sequence[tuple]], Iterator[str]] | None = None,
) -> int:
    """Insert rows that are expected to be new; returns the rows inserted. Large batches are COPYed
    straight into the table inside a savepoint: no staging, no conflict handling. If another writer
    stored one of them meanwhile (a unique violation), the savepoint undoes the COPY and the batch
    takes bulk_upsert's DO NOTHING path, so the outcome is the same either way."""
    if not rows:
        return 0
    raw = connection.connection.dbapi_connection
    if len(rows) < COPY_MIN_ROWS or raw.autocommit:
        return bulk_upsert(connection, table, columns, rows, conflict_columns).written
    with raw.cursor() as cursor:
        cursor.execute("SAVEPOINT insert_new")
        try:
            source = _LineReader(copy_lines(rows)) if copy_lines else _CopyReader(rows, _field_formatters(table, tuple(columns)))
            cursor.copy_expert(f"COPY {_qualified(table)} ({_quote(columns)}) FROM STDIN", source)
        except psycopg2.errors.UniqueViolation:
            cursor.execute("ROLLBACK TO SAVEPOINT insert_new")
            cursor.execute("RELEASE SAVEPOINT insert_new")
            return bulk_upsert(connection, table, columns, rows, conflict_columns).written
        inserted = cursor.rowcount
        cursor.execute("RELEASE SAVEPOINT insert_new")
    return inserted


def reserve_ids(connection: sa.Connection, table: sa.Table, count: int) -> list[int]:
    """`count` values of the table's identity sequence, so rows can be COPYed with their ids."""
    result = connection.execute(
        sa.text("SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :n)"),
        {"table": f"{table.schema}.{table.name}", "n": count},
    )
    return [row[0] for row in result]
