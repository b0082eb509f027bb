"""The competition store as a Dagster resource: one engine per process, migrated on first use."""

from __future__ import annotations

import threading
from typing import Any, Iterable, Sequence

import dagster as dg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from resources.database_url import resolve_database_url
from resources.store.migrations import migrate

_engines: dict[str, sa.Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str | None = None) -> sa.Engine:
    """A migrated engine for `url` (None: $CRUNCH_DATABASE_URL or the embedded server), cached
    per process so a run's assets share one connection pool."""
    resolved = resolve_database_url(url)
    with _engines_lock:
        engine = _engines.get(resolved)
        if engine is None:
            engine = sa.create_engine(resolved, pool_pre_ping=True, pool_size=5, max_overflow=5)
            migrate(engine)
            _engines[resolved] = engine
        return engine


def dispose_engines() -> None:
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def upsert(
    connection: sa.Connection,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    conflict_columns: Iterable[str],
    update_columns: Iterable[str] = (),
    returning: Sequence[sa.Column] = (),
) -> tuple[int, list[sa.Row]]:
    """(rows inserted or changed, RETURNING rows). One multi-row INSERT .. ON CONFLICT per batch (never a statement or commit per row).

    With update_columns, a conflicting row is updated only where a value really changes, so
    re-running a partition with the same data touches nothing.
    """
    if not rows:
        return 0, []
    update_columns = list(update_columns)
    result_rows: list[sa.Row] = []
    affected = 0
    batch_size = max(1, 30_000 // max(1, len(rows[0])))  # stay under PostgreSQL's 65,535 bind parameters
    for offset in range(0, len(rows), batch_size):
        statement = pg_insert(table).values(list(rows[offset : offset + batch_size]))
        if update_columns:
            changed = sa.or_(*(table.c[c].is_distinct_from(statement.excluded[c]) for c in update_columns))
            statement = statement.on_conflict_do_update(
                index_elements=list(conflict_columns),
                set_={c: statement.excluded[c] for c in update_columns},
                where=changed,
            )
        else:
            statement = statement.on_conflict_do_nothing(index_elements=list(conflict_columns))
        if returning:
            statement = statement.returning(*returning)
            batch = connection.execute(statement).fetchall()
            result_rows.extend(batch)
            affected += len(batch)
        else:
            affected += connection.execute(statement).rowcount
    return affected, result_rows


class CrunchDatabase(dg.ConfigurableResource):
    """The canonical store. `url` unset: $CRUNCH_DATABASE_URL, else the embedded PostgreSQL."""

    url: str | None = None

    @property
    def engine(self) -> sa.Engine:
        return engine_for(self.url)
