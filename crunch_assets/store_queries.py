"""The engine's reads and writes of the canonical store, one bulk statement per batch."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Iterable

import sqlalchemy as sa

from crunch_assets.prices import PriceObservation, PriceSeries
from crunch_assets.ranking import SnapshotRow
from resources.feeds.base import Candle, granularity_label
from resources.store import schema as t
from resources.store.database import upsert


def upsert_candles(connection: sa.Connection, source: str, candles: Iterable[Candle]) -> int:
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
