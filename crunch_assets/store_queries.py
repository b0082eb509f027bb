"""The engine's reads and writes of the canonical store, one bulk statement per batch."""

from __future__ import annotations

import io
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Iterable

import sqlalchemy as sa

from crunch_assets.prices import PriceObservation, PriceSeries
from crunch_assets.ranking import SnapshotRow
from resources.feeds.base import Candle, granularity_label
from resources.store import schema as t
from resources.store.database import upsert


# Below this many candles one multi-row INSERT is quicker than staging (a live cycle writes a few).
COPY_MIN_CANDLES = 500
_STAGE_TABLE = "pg_temp.feed_records_stage"
_COPY_SPECIALS = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _candle_values(c: Candle) -> dict[str, float]:
    return {"open": c.open, "high": c.high, "low": c.low, "close": c.close, "volume": c.volume}


def upsert_candles(connection: sa.Connection, source: str, candles: Iterable[Candle]) -> int:
    """Write candles to feed_records; returns the number of rows inserted or changed.

    A candle already stored with the same price and values is left untouched (its xmin does not
    change); a corrected one is updated. Large batches go through COPY into a temporary table and
    one INSERT .. SELECT .. ON CONFLICT, in the caller's transaction.
    """
    candles = candles if isinstance(candles, list) else list(candles)
    if len(candles) >= COPY_MIN_CANDLES:
        return _copy_upsert_candles(connection, source, candles)
    rows = [
        {
            "source": source,
            "subject": c.subject,
            "kind": "candle",
            "granularity": granularity_label(c.granularity_seconds),
            "ts_event": c.ts_event,
            "price": float(c.close),
            "values": {name: float(value) for name, value in _candle_values(c).items()},
        }
        for c in candles
    ]
    written, _ = upsert(
        connection,
        t.feed_records,
        rows,
        ["source", "subject", "kind", "granularity", "ts_event"],
        update_columns=["price", "values"],
    )
    return written


def _copy_text(value: str) -> str:
    """A text field in COPY's text format (backslash, tab and newlines escaped)."""
    return value.translate(_COPY_SPECIALS)


def _candle_copy_lines(candles: list[Candle]) -> str:
    """COPY text rows: subject, granularity, ts_event, price, values (JSON). Floats are written
    with repr, the shortest text that reads back to the same double (what json.dumps writes)."""
    labels: dict[tuple[str, int], str] = {}  # (subject, granularity_seconds) -> escaped prefix
    lines = []
    append = lines.append
    for c in candles:
        prefix = labels.get((c.subject, c.granularity_seconds))
        if prefix is None:
            prefix = labels[(c.subject, c.granularity_seconds)] = (
                f"{_copy_text(c.subject)}\t{_copy_text(granularity_label(c.granularity_seconds))}\t"
            )
        close = float(c.close)
        append(
            f'{prefix}{c.ts_event.isoformat()}\t{close!r}\t{{"open": {float(c.open)!r}, "high": {float(c.high)!r}, '
            f'"low": {float(c.low)!r}, "close": {close!r}, "volume": {float(c.volume)!r}}}\n'
        )
    return "".join(lines)


def _copy_upsert_candles(connection: sa.Connection, source: str, candles: list[Candle]) -> int:
    """COPY into a temporary staging table, then one INSERT .. SELECT .. ON CONFLICT that updates
    only rows whose price or values really change. Same transaction as the caller's statements:
    the raw psycopg2 connection is the one `connection` holds."""
    raw_connection = connection.connection.dbapi_connection
    with raw_connection.cursor() as cursor:
        # Dropped and created per call: a second call in the same transaction starts empty, and a
        # table left by a failed autocommit call cannot get in the way.
        cursor.execute(
            f"DROP TABLE IF EXISTS {_STAGE_TABLE}; "
            f"CREATE TABLE {_STAGE_TABLE} "  # pg_temp: a temporary table, private to this session
            "(subject text NOT NULL, granularity text NOT NULL, ts_event timestamptz NOT NULL, "
            "price double precision NOT NULL, \"values\" jsonb NOT NULL)"
        )
        cursor.copy_expert(
            f"COPY {_STAGE_TABLE} (subject, granularity, ts_event, price, \"values\") FROM STDIN",
            io.StringIO(_candle_copy_lines(candles)),
        )
        cursor.execute(
            f"""
            INSERT INTO crunch.feed_records (source, subject, kind, granularity, ts_event, price, "values")
            SELECT %(source)s, subject, 'candle', granularity, ts_event, price, "values" FROM {_STAGE_TABLE}
            ON CONFLICT (source, subject, kind, granularity, ts_event) DO UPDATE
            SET price = excluded.price, "values" = excluded."values"
            WHERE (feed_records.price, feed_records."values") IS DISTINCT FROM (excluded.price, excluded."values")
            """,
            {"source": source},
        )
        written = cursor.rowcount
        cursor.execute(f"DROP TABLE {_STAGE_TABLE}")
    return written


def advance_watermark(connection: sa.Connection, source: str, subject: str, granularity_seconds: int, last_event: datetime) -> None:
    """The ingestion watermark only moves forward (a backfill of an old window leaves it)."""
    table = t.feed_ingestion_state
    statement = sa.dialects.postgresql.insert(table).values(
        source=source, subject=subject, kind="candle", granularity=granularity_label(granularity_seconds),
        last_event_ts=last_event,
    )
    statement = statement.on_conflict_do_update(
        index_elements=["source", "subject", "kind", "granularity"],
        set_={"last_event_ts": statement.excluded.last_event_ts, "updated_at": sa.func.now()},
        where=sa.or_(table.c.last_event_ts.is_(None), table.c.last_event_ts < statement.excluded.last_event_ts),
    )
    connection.execute(statement)


def watermark(connection: sa.Connection, source: str, subject: str, granularity_seconds: int) -> datetime | None:
    """Open time of the last stored candle (None: nothing stored yet)."""
    s = t.feed_ingestion_state
    return connection.execute(
        sa.select(s.c.last_event_ts).where(
            s.c.source == source, s.c.subject == subject, s.c.kind == "candle",
            s.c.granularity == granularity_label(granularity_seconds),
        )
    ).scalar()


def load_candles(
    connection: sa.Connection, source: str, subjects: list[str], granularity_seconds: int, start: datetime, end: datetime
) -> dict[str, list[Candle]]:
    """Stored candles with open time in [start, end), per subject, ascending."""
    r = t.feed_records
    rows = connection.execute(
        sa.select(r.c.subject, r.c.ts_event, r.c["values"])
        .where(
            r.c.source == source,
            r.c.subject.in_(subjects),
            r.c.kind == "candle",
            r.c.granularity == granularity_label(granularity_seconds),
            r.c.ts_event >= start,
            r.c.ts_event < end,
        )
        .order_by(r.c.subject, r.c.ts_event)
    )
    by_subject: dict[str, list[Candle]] = defaultdict(list)
    for subject, ts_event, values in rows:
        by_subject[subject].append(
            Candle(subject, ts_event, values["open"], values["high"], values["low"], values["close"], values["volume"], granularity_seconds)
        )
    return by_subject


def load_price_series(
    connection: sa.Connection, source: str, subject: str, granularity_seconds: int, start: datetime, end: datetime
) -> PriceSeries:
    """Close prices observed (at candle close time) in [start, end]."""
    r = t.feed_records
    step = timedelta(seconds=granularity_seconds)
    rows = connection.execute(
        sa.select(r.c.ts_event, r.c.price).where(
            r.c.source == source,
            r.c.subject == subject,
            r.c.kind == "candle",
            r.c.granularity == granularity_label(granularity_seconds),
            r.c.ts_event >= start - step,
            r.c.ts_event <= end - step,
        )
    )
    return PriceSeries([PriceObservation(ts_event + step, price) for ts_event, price in rows])


def stored_cycles(connection: sa.Connection, competition: str, start: datetime, end: datetime) -> set[tuple[datetime, str]]:
    i = t.inputs
    rows = connection.execute(
        sa.select(i.c.cycle_at, i.c.scope_key).where(
            i.c.competition == competition, i.c.cycle_at >= start, i.c.cycle_at < end
        )
    )
    return {(cycle_at, scope_key) for cycle_at, scope_key in rows}


def load_snapshot_rows(connection: sa.Connection, competition: str, start: datetime, end: datetime) -> list[SnapshotRow]:
    """Hourly snapshots whose period starts in [start, end): half-open, so a boundary snapshot
    is never counted in two windows."""
    s = t.snapshots
    rows = connection.execute(
        sa.select(s.c.model_id, s.c.period_start, s.c.period_end, s.c.prediction_count, s.c.value_sum)
        .where(s.c.competition == competition, s.c.period_start >= start, s.c.period_start < end)
        .order_by(s.c.period_start, s.c.model_id)
    )
    return [SnapshotRow(*row) for row in rows]


def model_names(connection: sa.Connection, competition: str) -> dict[str, dict]:
    m = t.models
    rows = connection.execute(
        sa.select(m.c.model_id, m.c.name, m.c.player_name, m.c.first_seen_at).where(m.c.competition == competition)
    )
    return {model_id: {"name": name, "player_name": player, "first_seen_at": first} for model_id, name, player, first in rows}


def prediction_status_counts(connection: sa.Connection, competition: str, start: datetime, end: datetime) -> dict[str, int]:
    p = t.predictions
    rows = connection.execute(
        sa.select(p.c.status, sa.func.count())
        .where(p.c.competition == competition, p.c.cycle_at >= start, p.c.cycle_at < end)
        .group_by(p.c.status)
    )
    return {status: int(count) for status, count in rows}



def feed_coverage(connection: sa.Connection, source: str, subjects: list[str], granularity_seconds: int) -> datetime | None:
    """Up to when every subject's feed is stored (the slowest subject's last candle close)."""
    s = t.feed_ingestion_state
    rows = connection.execute(
        sa.select(s.c.subject, s.c.last_event_ts).where(
            s.c.source == source, s.c.subject.in_(subjects), s.c.granularity == granularity_label(granularity_seconds)
        )
    ).fetchall()
    if len(rows) < len(subjects) or any(r.last_event_ts is None for r in rows):
        return None
    return min(r.last_event_ts for r in rows) + timedelta(seconds=granularity_seconds)


def first_snapshot_hours(connection: sa.Connection, competition: str) -> dict[str, datetime]:
    """Each model's first scored hour: when it joined, as far as ranking is concerned."""
    s = t.snapshots
    rows = connection.execute(
        sa.select(s.c.model_id, sa.func.min(s.c.period_start)).where(s.c.competition == competition).group_by(s.c.model_id)
    )
    return {model_id: first for model_id, first in rows}
