"""Feed records, the spans that were fetched, subscriptions and retention: all SQL on feed tables.

Feed rows are shared by every competition reading the same (source, subject, kind, granularity)
stream; a competition only ever adds rows, and retention deletes a stream's rows only past every
subscriber's retention.
"""

from __future__ import annotations

import bisect
import zlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, Iterator, Sequence

import psycopg2.errors
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from resources.feeds.base import CANDLE, TICK, Candle, FeedRecord, FeedStream, Record, Tick
from resources.store import schema as t
from resources.store.bulk import bulk_upsert, copy_text

DAY = timedelta(days=1)
_FEED_RECORDS = "crunch.feed_records"
_STAGE_TABLE = "pg_temp.feed_records_stage"
_COPY_COLUMNS = '(source, subject, kind, granularity, ts_event, price, "values")'
COPY_MIN_RECORDS = 500  # below this, one multi-row INSERT is quicker than COPY (a live cycle writes a few)
_COPY_CHUNK_RECORDS = 500
_RECORD_COLUMNS = ("source", "subject", "kind", "granularity", "ts_event", "price", "values")
_RECORD_KEY = ("source", "subject", "kind", "granularity", "ts_event")
# One candle as a COPY row after the source/subject/kind/granularity prefix. Numbers go through
# str(), which for a float is its shortest round-trip text, as json.dumps writes it.
_CANDLE_COPY_ROW = '%s%s\t%s\t{"open": %s, "high": %s, "low": %s, "close": %s, "volume": %s}\n'
# A span's end is exclusive; a fetch as of T has seen T itself.
AS_OF_INCLUSIVE = timedelta(microseconds=1)


@dataclass(frozen=True)
class RecordsWritten:
    written: int  # rows inserted or changed
    corrected: int  # of those, stored rows whose values changed (a source's correction)


@dataclass(frozen=True)
class StreamSpans:
    """The merged fetched spans of one stream, ascending: [(start, end exclusive), ...]."""

    spans: tuple[tuple[datetime, datetime], ...]

    def covers(self, start: datetime, end_inclusive: datetime) -> bool:
        """Whether [start, end_inclusive] lies inside one fetched span."""
        starts = [s for s, _ in self.spans]
        index = bisect.bisect_right(starts, start) - 1
        return index >= 0 and self.spans[index][1] > end_inclusive

    def covered_until(self, instant: datetime) -> datetime | None:
        """The exclusive end of the span holding `instant`, or None."""
        starts = [s for s, _ in self.spans]
        index = bisect.bisect_right(starts, instant) - 1
        if index >= 0 and self.spans[index][1] > instant:
            return self.spans[index][1]
        return None


@dataclass(frozen=True)
class DefectEpisode:
    """A stream's fetches that came back defective in a row (malformed rows, conflicting
    duplicates), kept in the stream's feed_ingestion_state.meta: the refetch schedule holds across
    ticks, runs and processes."""

    first_seen: datetime
    last_fetch: datetime
    fetches: int
    detail: str  # what the last defective fetch found

    def to_json(self) -> dict:
        return {"first_seen": self.first_seen.isoformat(), "last_fetch": self.last_fetch.isoformat(),
                "fetches": self.fetches, "detail": self.detail}

    @classmethod
    def from_json(cls, value: dict) -> "DefectEpisode":
        return cls(datetime.fromisoformat(value["first_seen"]), datetime.fromisoformat(value["last_fetch"]),
                   int(value["fetches"]), str(value.get("detail", "")))


@dataclass(frozen=True)
class StreamHealth:
    """What an operator needs when a stream falls behind: how far it is fetched, the last fetch
    error (cleared by the next fetch that returns) and the open defect episode."""

    fetched_until: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    defect: DefectEpisode | None


_DEFECT_KEY = "defect"
_LAST_ERROR_KEY = "last_error"


def _stream_filter(stream: FeedStream, table: sa.Table = t.feed_records):
    return (
        (table.c.source == stream.source) & (table.c.subject == stream.subject)
        & (table.c.kind == stream.kind) & (table.c.granularity == stream.granularity)
    )


def _record_from_row(stream: FeedStream, ts_event: datetime, price: float | None, values: dict) -> Record:
    if stream.kind == CANDLE:
        return Candle(stream.subject, ts_event, values["open"], values["high"], values["low"], values["close"],
                      values["volume"], stream.granularity_seconds)
    if stream.kind == TICK:
        return Tick(stream.subject, ts_event, price)
    return FeedRecord(stream.subject, stream.kind, ts_event, values, price, stream.granularity_seconds)


class FeedStore:
    """Every read and write of feed_records, feed_spans, feed_ingestion_state and subscriptions."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    # --- writes ----------------------------------------------------------------------------------

    def store_fetch(self, stream: FeedStream, records: Sequence[Record], span: tuple[datetime, datetime] | None,
                    defect: DefectEpisode | None = None) -> RecordsWritten:
        """Records, the fetched span (None: the fetch was incomplete), the watermark and the
        stream's defect episode (None: none open), in one transaction: a span is never recorded
        without its rows. A fetch that returned clears the stream's last fetch error."""
        with self.engine.begin() as connection:
            written = upsert_records(connection, stream, records)
            if span is not None and span[0] < span[1]:
                record_span(connection, stream, *span)
            if records:
                advance_watermark(connection, stream, max(r.ts_event for r in records))
            _update_stream_meta(connection, stream, {_DEFECT_KEY: defect.to_json()} if defect else {},
                                remove=(_LAST_ERROR_KEY,) if defect else (_LAST_ERROR_KEY, _DEFECT_KEY))
        return written

    def note_fetch_error(self, stream: FeedStream, error: str, at: datetime) -> None:
        """Keep the stream's last fetch error, for the lag check's alert (a live fetch failure is
        reported, not raised)."""
        with self.engine.begin() as connection:
            _update_stream_meta(connection, stream, {_LAST_ERROR_KEY: {"at": at.isoformat(), "error": error[:1000]}})

    def defect_episodes(self, streams: Iterable[FeedStream]) -> dict[FeedStream, DefectEpisode | None]:
        return {stream: health.defect for stream, health in self.stream_health(streams).items()}

    def stream_health(self, streams: Iterable[FeedStream]) -> dict[FeedStream, StreamHealth]:
        s, state = t.feed_spans, t.feed_ingestion_state
        result = {}
        with self.engine.connect() as connection:
            for stream in streams:
                fetched_until = connection.execute(
                    sa.select(sa.func.max(s.c.span_end)).where(_stream_filter(stream, s))).scalar()
                meta = connection.execute(sa.select(state.c.meta).where(_stream_filter(stream, state))).scalar() or {}
                error = meta.get(_LAST_ERROR_KEY) or {}
                result[stream] = StreamHealth(
                    fetched_until, error.get("error"),
                    datetime.fromisoformat(error["at"]) if error.get("at") else None,
                    DefectEpisode.from_json(meta[_DEFECT_KEY]) if meta.get(_DEFECT_KEY) else None,
                )
        return result

    def subscribe(self, competition: str, streams: Iterable[FeedStream], retention_days: int) -> None:
        rows = [(competition, s.source, s.subject, s.kind, s.granularity, retention_days) for s in streams]
        with self.engine.begin() as connection:
            bulk_upsert(
                connection, t.feed_subscriptions,
                ("competition", "source", "subject", "kind", "granularity", "retention_days"), rows,
                ("competition", "source", "subject", "kind", "granularity"), update_columns=("retention_days",),
            )

    # --- reads -----------------------------------------------------------------------------------

    def spans(self, streams: Iterable[FeedStream], start: datetime, end: datetime) -> dict[FeedStream, StreamSpans]:
        """Fetched spans of each stream that overlap [start, end]."""
        s = t.feed_spans
        result = {}
        with self.engine.connect() as connection:
            for stream in streams:
                rows = connection.execute(
                    sa.select(s.c.span_start, s.c.span_end)
                    .where(_stream_filter(stream, s), s.c.span_start <= end, s.c.span_end >= start)
                    .order_by(s.c.span_start)
                ).fetchall()
                result[stream] = StreamSpans(tuple((row.span_start, row.span_end) for row in rows))
        return result

    def load_records(
        self, streams: Iterable[FeedStream], observed_from: datetime, observed_to: datetime
    ) -> dict[FeedStream, list[Record]]:
        """Stored records of each stream observed in [observed_from, observed_to], ascending."""
        r = t.feed_records
        loaded: dict[FeedStream, list[Record]] = {}
        with self.engine.connect() as connection:
            for stream in streams:
                lag = stream.observation_lag
                rows = connection.execute(
                    sa.select(r.c.ts_event, r.c.price, r.c["values"])
                    .where(_stream_filter(stream), r.c.ts_event >= observed_from - lag, r.c.ts_event <= observed_to - lag)
                    .order_by(r.c.ts_event)
                )
                loaded[stream] = [_record_from_row(stream, ts, price, values) for ts, price, values in rows]
        return loaded

    def fetched_until(self, streams: Iterable[FeedStream]) -> datetime | None:
        """How far every stream has been fetched: the earliest of their last spans' ends (None
        when a stream has never been fetched)."""
        s = t.feed_spans
        ends = []
        with self.engine.connect() as connection:
            for stream in streams:
                end = connection.execute(sa.select(sa.func.max(s.c.span_end)).where(_stream_filter(stream, s))).scalar()
                if end is None:
                    return None
                ends.append(end)
        return min(ends) if ends else None

    def watermarks(self, streams: Iterable[FeedStream]) -> dict[FeedStream, datetime | None]:
        """The event time of each stream's last stored record."""
        s = t.feed_ingestion_state
        result = {}
        with self.engine.connect() as connection:
            for stream in streams:
                result[stream] = connection.execute(
                    sa.select(s.c.last_event_ts).where(_stream_filter(stream, s))
                ).scalar()
        return result

    def stream_summaries(self, sources: Iterable[str] | None = None) -> list[dict]:
        """Per stored stream: row count, first and last event, watermark (for reports)."""
        r, s = t.feed_records, t.feed_ingestion_state
        query = (
            sa.select(r.c.source, r.c.subject, r.c.kind, r.c.granularity, sa.func.count().label("records"),
                      sa.func.min(r.c.ts_event).label("first_event"), sa.func.max(r.c.ts_event).label("last_event"))
            .group_by(r.c.source, r.c.subject, r.c.kind, r.c.granularity)
            .order_by(r.c.source, r.c.subject, r.c.kind, r.c.granularity)
        )
        if sources is not None:
            query = query.where(r.c.source.in_(list(sources)))
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
            marks = {(m.source, m.subject, m.kind, m.granularity): m.last_event_ts
                     for m in connection.execute(sa.select(s.c.source, s.c.subject, s.c.kind, s.c.granularity, s.c.last_event_ts))}
        return [{**row, "watermark": marks.get((row["source"], row["subject"], row["kind"], row["granularity"]))} for row in rows]

    def retention_days(self, stream: FeedStream) -> int | None:
        """The longest retention any subscriber of the stream asks for (None: no subscriber)."""
        sub = t.feed_subscriptions
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(sa.func.max(sub.c.retention_days)).where(_stream_filter(stream, sub))
            ).scalar()

    # --- archive and retention -------------------------------------------------------------------

    def load_day(self, stream: FeedStream, day_start: datetime) -> list[tuple[datetime, float | None, dict]]:
        """(ts_event, price, values) of the stream's rows with ts_event in the day, ascending."""
        r = t.feed_records
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(
                sa.select(r.c.ts_event, r.c.price, r.c["values"])
                .where(_stream_filter(stream), r.c.ts_event >= day_start, r.c.ts_event < day_start + DAY)
                .order_by(r.c.ts_event)
            )]

    def days_before(self, stream: FeedStream, cutoff: datetime) -> list[tuple[datetime, int]]:
        """(day start, rows) of the stream's days with ts_event before cutoff."""
        r = t.feed_records
        day_column = sa.func.date_trunc("day", r.c.ts_event, "UTC")
        with self.engine.connect() as connection:
            return [
                (day.astimezone(timezone.utc), int(count)) for day, count in connection.execute(
                    sa.select(day_column, sa.func.count())
                    .where(_stream_filter(stream), r.c.ts_event < cutoff)
                    .group_by(day_column).order_by(day_column)
                )
            ]

    def delete_day_if(self, stream: FeedStream, day_start: datetime, accept) -> tuple[bool, object]:
        """Delete the stream's rows of one day, returning them to `accept(rows)`; commit only when
        it returns None (else roll back and return its verdict). A row written meanwhile is either
        in the returned rows or not deleted: nothing is lost between a check and the delete."""
        r = t.feed_records
        with self.engine.connect() as connection:
            transaction = connection.begin()
            deleted = connection.execute(
                sa.delete(r)
                .where(_stream_filter(stream), r.c.ts_event >= day_start, r.c.ts_event < day_start + DAY)
                .returning(r.c.ts_event, r.c.price, r.c["values"])
            ).fetchall()
            problem = accept([tuple(row) for row in deleted])
            if problem is not None:
                transaction.rollback()
                return False, problem
            transaction.commit()
            return True, len(deleted)


# --- statements used inside a caller's transaction -----------------------------------------------


def upsert_records(connection: sa.Connection, stream: FeedStream, records: Sequence[Record]) -> RecordsWritten:
    """Write records of one stream; a record stored with the same price and values is left
    untouched (its xmin does not change), a changed one is updated and counted as a correction.

    Large candle batches go through COPY: straight into feed_records when none of the batch's time
    span holds a stored row (new history), otherwise through a staging table and one
    INSERT .. SELECT .. ON CONFLICT.
    """
    records = records if isinstance(records, list) else list(records)
    if not records:
        return RecordsWritten(0, 0)
    raw_connection = connection.connection.dbapi_connection
    r = t.feed_records
    if stream.kind == CANDLE and len(records) >= COPY_MIN_RECORDS and not raw_connection.autocommit:
        with raw_connection.cursor() as cursor:
            if _span_is_empty(connection, stream, records):
                written = _copy_candles_into_empty_span(cursor, stream, records)
                if written is not None:
                    return RecordsWritten(written, 0)
            inserted_flags = _copy_upsert_candles_through_stage(cursor, stream, records)
    else:
        rows = [
            (stream.source, stream.subject, stream.kind, stream.granularity, rec.ts_event, rec.price, rec.values)
            for rec in records
        ]
        # xmax is 0 on a row this statement inserted, the updating transaction's id otherwise.
        returned = bulk_upsert(
            connection, r, _RECORD_COLUMNS, rows, _RECORD_KEY, update_columns=("price", "values"), returning=("xmax",)
        ).returned
        inserted_flags = [str(xmax) == "0" for (xmax,) in returned]
    return RecordsWritten(len(inserted_flags), sum(1 for inserted in inserted_flags if not inserted))


def _span_is_empty(connection: sa.Connection, stream: FeedStream, records: Sequence[Record]) -> bool:
    """Whether the stream holds no row in the batch's time span (an index range probe)."""
    r = t.feed_records
    first, last = min(c.ts_event for c in records), max(c.ts_event for c in records)
    return connection.execute(
        sa.select(sa.literal(True)).where(_stream_filter(stream), r.c.ts_event >= first, r.c.ts_event <= last).limit(1)
    ).scalar() is None


def _copy_candles_into_empty_span(cursor, stream: FeedStream, candles: Sequence[Candle]) -> int | None:
    """COPY straight into feed_records (no conflict handling needed: the span was empty). None
    when a concurrent writer stored one of the rows meanwhile: the savepoint undoes the partial
    COPY and the caller takes the ON CONFLICT path."""
    cursor.execute("SAVEPOINT copy_candles")
    try:
        cursor.copy_expert(f"COPY {_FEED_RECORDS} {_COPY_COLUMNS} FROM STDIN", _CandleCopyReader(stream, candles))
    except psycopg2.errors.UniqueViolation:
        cursor.execute("ROLLBACK TO SAVEPOINT copy_candles")
        cursor.execute("RELEASE SAVEPOINT copy_candles")
        return None
    written = cursor.rowcount
    cursor.execute("RELEASE SAVEPOINT copy_candles")
    return written


def _copy_upsert_candles_through_stage(cursor, stream: FeedStream, candles: Sequence[Candle]) -> list[bool]:
    """Per written row: True if inserted, False if a stored row changed."""
    cursor.execute(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE_TABLE} "
        "(source text NOT NULL, subject text NOT NULL, kind text NOT NULL, granularity text NOT NULL, "
        'ts_event timestamptz NOT NULL, price double precision, "values" jsonb NOT NULL) '
        f"ON COMMIT DROP; TRUNCATE {_STAGE_TABLE}"
    )
    cursor.copy_expert(f"COPY {_STAGE_TABLE} {_COPY_COLUMNS} FROM STDIN", _CandleCopyReader(stream, candles))
    cursor.execute(
        f"""
        INSERT INTO {_FEED_RECORDS} AS stored {_COPY_COLUMNS}
        SELECT source, subject, kind, granularity, ts_event, price, "values" FROM {_STAGE_TABLE}
        ON CONFLICT (source, subject, kind, granularity, ts_event) DO UPDATE
        SET price = excluded.price, "values" = excluded."values"
        WHERE ROW(stored.price, stored."values") IS DISTINCT FROM ROW(excluded.price, excluded."values")
        RETURNING stored.xmax = 0
        """
    )
    return [inserted for (inserted,) in cursor.fetchall()]


class _CandleCopyReader:
    """COPY text rows for candles, a chunk per read(): formatting overlaps the server's parsing."""

    def __init__(self, stream: FeedStream, candles: Sequence[Candle]) -> None:
        self._chunks = self._format(stream, candles)

    def read(self, size: int = -1) -> str:
        return next(self._chunks, "")

    @staticmethod
    def _format(stream: FeedStream, candles: Sequence[Candle]) -> Iterator[str]:
        prefix = "".join(copy_text(f) + "\t" for f in (stream.source, stream.subject, stream.kind, stream.granularity))
        row = _CANDLE_COPY_ROW
        for offset in range(0, len(candles), _COPY_CHUNK_RECORDS):
            yield "".join([
                row % (prefix, c.ts_event.isoformat(), c.close, c.open, c.high, c.low, c.close, c.volume)
                for c in candles[offset : offset + _COPY_CHUNK_RECORDS]
            ])


def _stream_lock_id(stream: FeedStream) -> int:
    return zlib.crc32(f"feed_spans|{stream.source}|{stream.subject}|{stream.kind}|{stream.granularity}".encode())


def record_span(connection: sa.Connection, stream: FeedStream, start: datetime, end: datetime) -> None:
    """Add [start, end) to the stream's fetched spans, merged with every span it overlaps or
    touches (under a per-stream lock, so concurrent fetches never leave overlapping spans)."""
    s = t.feed_spans
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _stream_lock_id(stream)})
    touching = connection.execute(
        sa.delete(s).where(_stream_filter(stream, s), s.c.span_start <= end, s.c.span_end >= start)
        .returning(s.c.span_start, s.c.span_end)
    ).fetchall()
    merged_start = min([start, *(row.span_start for row in touching)])
    merged_end = max([end, *(row.span_end for row in touching)])
    connection.execute(sa.insert(s).values(
        source=stream.source, subject=stream.subject, kind=stream.kind, granularity=stream.granularity,
        span_start=merged_start, span_end=merged_end,
    ))


def _update_stream_meta(connection: sa.Connection, stream: FeedStream, values: dict, remove: Sequence[str] = ()) -> None:
    """Set `values` and drop the `remove` keys in the stream's feed_ingestion_state.meta (the row
    is created if the stream has none yet)."""
    if not values and not remove:
        return
    table = t.feed_ingestion_state
    statement = postgresql.insert(table).values(
        source=stream.source, subject=stream.subject, kind=stream.kind, granularity=stream.granularity, meta=values,
    )
    kept = table.c.meta.op("-")(sa.literal(list(remove), postgresql.ARRAY(sa.Text))) if remove else table.c.meta
    statement = statement.on_conflict_do_update(
        index_elements=["source", "subject", "kind", "granularity"],
        set_={"meta": kept.op("||", return_type=postgresql.JSONB)(sa.literal(values, postgresql.JSONB))},
    )
    connection.execute(statement)


def advance_watermark(connection: sa.Connection, stream: FeedStream, last_event: datetime) -> None:
    """The ingestion watermark only moves forward (a backfill of an old window leaves it)."""
    table = t.feed_ingestion_state
    statement = sa.dialects.postgresql.insert(table).values(
        source=stream.source, subject=stream.subject, kind=stream.kind, granularity=stream.granularity,
        last_event_ts=last_event,
    )
    statement = statement.on_conflict_do_update(
        index_elements=["source", "subject", "kind", "granularity"],
        set_={"last_event_ts": statement.excluded.last_event_ts, "updated_at": sa.func.now()},
        where=sa.or_(table.c.last_event_ts.is_(None), table.c.last_event_ts < statement.excluded.last_event_ts),
    )
    connection.execute(statement)


def group_by_subject(records: Iterable[Record]) -> dict[str, list[Record]]:
    grouped: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        grouped[record.subject].append(record)
    return grouped
