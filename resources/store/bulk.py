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
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator, Sequence

import psycopg2.extras
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# Above this many rows, COPY + staging beats a multi-row INSERT (measured: bench/bench_store_writes.py).
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
        return json.dumps(value, allow_nan=False).translate(_COPY_SPECIALS)
    return str(value).translate(_COPY_SPECIALS)


class _CopyReader:
    """A file-like source for copy_expert, formatting rows a chunk per read()."""

    def __init__(self, rows: Sequence[tuple]):
        self._chunks = self._format(rows)

    def read(self, size: int = -1) -> str:  # psycopg2 passes a size; the chunks are ours
        return next(self._chunks, "")

    readline = read

    @staticmethod
    def _format(rows: Sequence[tuple]) -> Iterator[str]:
        for offset in range(0, len(rows), _COPY_CHUNK_ROWS):
            yield "".join(
                "\t".join(copy_text(v) for v in row) + "\n" for row in rows[offset : offset + _COPY_CHUNK_ROWS]
            )


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
            cursor.copy_expert(copy, _CopyReader(rows))
            cursor.execute(move)
            returned = cursor.fetchall()
        else:
            json_positions = _json_columns(table, tuple(columns))
            if json_positions:
                rows = [
                    tuple(psycopg2.extras.Json(v) if i in json_positions and v is not None else v for i, v in enumerate(row))
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
        tuple(psycopg2.extras.Json(v) if i in json_positions and v is not None else v for i, v in enumerate(row))
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
