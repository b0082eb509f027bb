"""The engine's reads and writes of the canonical store, one bulk statement per batch."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Iterable, Iterator

import psycopg2.errors
import sqlalchemy as sa

from crunch_assets.prices import PriceObservation, PriceSeries
from crunch_assets.ranking import SnapshotRow
from resources.feeds.base import Candle, granularity_label
from resources.store import schema as t
from resources.store.database import upsert


# Below this many candles one multi-row INSERT is quicker than COPY (a live cycle writes a few).
COPY_MIN_CANDLES = 500
_FEED_RECORDS = "crunch.feed_records"
_STAGE_TABLE = "pg_temp.feed_records_stage"
_COPY_COLUMNS = '(source, subject, kind, granularity, ts_event, price, "values")'
_COPY_CHUNK_CANDLES = 500  # rows formatted per read(): the server parses one chunk while we format the next
_COPY_SPECIALS = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
# One COPY row after the source/subject/kind/granularity prefix: ts_event, price, values. Numbers go
# through str(), which for a float is its shortest round-trip text, as json.dumps writes it.
_COPY_ROW = '%s%s\t%s\t{"open": %s, "high": %s, "low": %s, "close": %s, "volume": %s}\n'


def upsert_candles(connection: sa.Connection, source: str, candles: Iterable[Candle]) -> int:
    """Write candles to feed_records; returns the number of rows inserted or changed.

    A candle already stored with the same price and values is left untouched (its xmin does not
    change); a corrected one is updated. Everything happens in the caller's transaction.

    Large batches go through COPY (a multi-row INSERT manages a few thousand rows a second; a
    backfill needs tens of thousands): straight into feed_records when none of the batch's time
    spans holds a stored row (new history), otherwise into a temporary table followed by one
    INSERT .. SELECT .. ON CONFLICT.
    """
    candles = candles if isinstance(candles, list) else list(candles)
    raw_connection = connection.connection.dbapi_connection
    # The staging table lives until the transaction ends: autocommit connections take the INSERT.
    if len(candles) < COPY_MIN_CANDLES or raw_connection.autocommit:
        return _insert_candles(connection, source, candles)
    with raw_connection.cursor() as cursor:
        if not _any_candle_stored(cursor, source, candles):
            written = _copy_candles_into_empty_ranges(cursor, source, candles)
            if written is not None:
                return written
        return _copy_upsert_candles_through_stage(cursor, source, candles)


def _insert_candles(connection: sa.Connection, source: str, candles: list[Candle]) -> int:
    rows = [
        {
            "source": source,
            "subject": c.subject,
            "kind": "candle",
            "granularity": granularity_label(c.granularity_seconds),
            "ts_event": c.ts_event,
            "price": c.close,
            "values": {"open": c.open, "high": c.high, "low": c.low, "close": c.close, "volume": c.volume},
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


def _any_candle_stored(cursor, source: str, candles: list[Candle]) -> bool:
    """Whether feed_records holds any row in the batch's time span of each (subject, granularity):
    an index range probe per pair, stopping at the first row."""
    spans: dict[tuple[str, int], list[datetime]] = {}
    for c in candles:
        span = spans.get((c.subject, c.granularity_seconds))
        if span is None:
            spans[(c.subject, c.granularity_seconds)] = [c.ts_event, c.ts_event]
        elif c.ts_event < span[0]:
            span[0] = c.ts_event
        elif c.ts_event > span[1]:
            span[1] = c.ts_event
    probe = (
        f"EXISTS (SELECT 1 FROM {_FEED_RECORDS} WHERE source = %s AND subject = %s AND kind = 'candle' "
        "AND granularity = %s AND ts_event BETWEEN %s AND %s)"
    )
    parameters = []
    for (subject, granularity_seconds), (first, last) in spans.items():
        parameters += [source, subject, granularity_label(granularity_seconds), first, last]
    cursor.execute("SELECT " + " OR ".join([probe] * len(spans)), parameters)
    return cursor.fetchone()[0]


def _copy_candles_into_empty_ranges(cursor, source: str, candles: list[Candle]) -> int | None:
    """COPY straight into feed_records (no conflict handling needed: the ranges were empty).
    None when a concurrent writer stored one of the rows meanwhile (unique violation): the
    savepoint undoes the partial COPY and the caller takes the ON CONFLICT path."""
    cursor.execute("SAVEPOINT copy_candles")
    try:
        cursor.copy_expert(f"COPY {_FEED_RECORDS} {_COPY_COLUMNS} FROM STDIN", _CandleCopyReader(source, candles))
    except psycopg2.errors.UniqueViolation:
        cursor.execute("ROLLBACK TO SAVEPOINT copy_candles")
        cursor.execute("RELEASE SAVEPOINT copy_candles")
        return None
    written = cursor.rowcount
    cursor.execute("RELEASE SAVEPOINT copy_candles")
    return written


def _copy_upsert_candles_through_stage(cursor, source: str, candles: list[Candle]) -> int:
    """COPY into a temporary table, then one INSERT .. SELECT .. ON CONFLICT that updates only the
    rows whose price or values really change."""
    # Created once per transaction and dropped at its end; a later call in the same transaction
    # empties it, in place (the table is new in this transaction).
    cursor.execute(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE_TABLE} "
        "(source text NOT NULL, subject text NOT NULL, kind text NOT NULL, granularity text NOT NULL, "
        "ts_event timestamptz NOT NULL, price double precision NOT NULL, \"values\" jsonb NOT NULL) "
        f"ON COMMIT DROP; TRUNCATE {_STAGE_TABLE}"
    )
    cursor.copy_expert(f"COPY {_STAGE_TABLE} {_COPY_COLUMNS} FROM STDIN", _CandleCopyReader(source, candles))
    cursor.execute(
        f"""
        INSERT INTO {_FEED_RECORDS} AS stored {_COPY_COLUMNS}
        SELECT source, subject, kind, granularity, ts_event, price, "values" FROM {_STAGE_TABLE}
        ON CONFLICT (source, subject, kind, granularity, ts_event) DO UPDATE
        SET price = excluded.price, "values" = excluded."values"
        WHERE (stored.price, stored."values") IS DISTINCT FROM (excluded.price, excluded."values")
        """
    )
    return cursor.rowcount


def _copy_text(value: str) -> str:
    """A field in COPY's text format (backslash, tab and line breaks escaped)."""
    return value.translate(_COPY_SPECIALS)


class _CandleCopyReader:
    """A file-like source for psycopg2's copy_expert, formatting candles as COPY text rows a chunk
    per read(): the formatting overlaps the server's parsing of the previous chunk."""

    def __init__(self, source: str, candles: list[Candle]) -> None:
        self._chunks = self._format(source, candles)

    def read(self, size: int = -1) -> str:  # psycopg2 passes a size; the chunks are ours
        return next(self._chunks, "")

    @staticmethod
    def _format(source: str, candles: list[Candle]) -> Iterator[str]:
        prefixes: dict[tuple[str, int], str] = {}  # (subject, granularity_seconds) -> leading fields

        def prefix(c: Candle) -> str:
            text = prefixes.get((c.subject, c.granularity_seconds))
            if text is None:
                fields = (source, c.subject, "candle", granularity_label(c.granularity_seconds))
                text = prefixes[(c.subject, c.granularity_seconds)] = "".join(_copy_text(f) + "\t" for f in fields)
            return text

        row = _COPY_ROW
        for offset in range(0, len(candles), _COPY_CHUNK_CANDLES):
            yield "".join([
                row % (prefix(c), c.ts_event.isoformat(), c.close, c.open, c.high, c.low, c.close, c.volume)
                for c in candles[offset : offset + _COPY_CHUNK_CANDLES]
            ])


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


def model_names(connection: sa.Connection, competition: str) -> dict[str, str]:
    m = t.models
    rows = connection.execute(sa.select(m.c.model_id, m.c.name).where(m.c.competition == competition))
    return {model_id: name for model_id, name in rows}


def upsert_models(
    connection: sa.Connection, competition: str, models: list, first_seen: datetime, last_seen: datetime
) -> None:
    """Record the runner's models (ModelInfo): identity and state are replaced, first and last
    seen only ever widen (a replay of old cycles and a live sighting both keep the extremes)."""
    if not models:
        return
    m = t.models
    statement = sa.dialects.postgresql.insert(m).values([
        {"competition": competition, "model_id": info.model_id, "name": info.name, "player_id": info.player_id,
         "player_name": info.player_name, "deployment_identifier": info.deployment_id, "state": info.state,
         "first_seen_at": first_seen, "last_seen_at": last_seen, "meta": info.meta}
        for info in models
    ])
    statement = statement.on_conflict_do_update(
        index_elements=["competition", "model_id"],
        set_={
            **{name: statement.excluded[name] for name in
               ("name", "player_id", "player_name", "deployment_identifier", "state", "meta")},
            "first_seen_at": sa.func.least(m.c.first_seen_at, statement.excluded.first_seen_at),
            "last_seen_at": sa.func.greatest(m.c.last_seen_at, statement.excluded.last_seen_at),
        },
    )
    connection.execute(statement)


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
