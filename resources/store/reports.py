"""What the report API reads, beyond the engine's own reads (CompetitionStore): pages of
predictions and snapshots with keyset cursors, the competition's feed streams, and lag figures.

Every read is bounded (a page size, or one row per scope) and every filter has an index behind it
(see schema.py: predictions by (competition, cycle_at), (competition, model_id, cycle_at),
(competition, scope_key, cycle_at), (competition, status, cycle_at); snapshots by
(competition, period_start) and (competition, model_id, period_start)).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator, Sequence

import sqlalchemy as sa

from resources.store import schema as t
from resources.store.competition import _checkpoint_row, derived_prediction_status
from resources.store.rows import CheckpointRow
from resources.store.lifecycles import CheckpointStatus, InputStatus, PredictionReportStatus, PredictionStatus

# Statuses a report shows: as made (PENDING answered and not scored yet, FAILED, ABSENT) or derived
# (SCORED: answered and scored; VOIDED: the cycle is void) -- as CompetitionStore.prediction_statuses.
PREDICTION_STATUSES = tuple(status.value for status in PredictionReportStatus)  # plain strings: the API declares them as a Literal
UNRESOLVED_CHOICES = ("embargoed", "omitted", "shown")


def cycle_resolved(p: sa.Table, s: sa.Table, i: sa.Table) -> sa.ColumnElement[bool]:
    """The embargo's one rule: a prediction's content (its output, and the reason it FAILED, which
    may quote the answer) is open only once its cycle is resolved: scored, or its input resolved or
    voided. Until then anyone could copy a live forecast (a 2-hour scope is 2 hours' head start)."""
    return sa.or_(i.c.status.in_((InputStatus.RESOLVED, InputStatus.VOIDED)), s.c.id.is_not(None))


@dataclass(frozen=True)
class PredictionReport:
    id: int
    model_id: str
    scope_key: str
    cycle_at: datetime
    resolvable_at: datetime
    status: str
    status_reason: str | None
    exec_time_ms: float | None
    inference_output: Any
    score_value: float | None
    score_success: bool | None
    score_failed_reason: str | None
    input_data: Any  # the model input, only when the caller asked for it (public keys only)
    # The cycle is not resolved and the caller may not see its content: inference_output is None,
    # and so is a FAILED prediction's status_reason (see cycle_resolved).
    embargoed: bool = False


@dataclass(frozen=True)
class SnapshotReport:
    id: int
    model_id: str
    scope_key: str
    period_start: datetime
    period_end: datetime
    prediction_count: int
    value: float | None
    result_summary: dict
    status_counts: dict


@dataclass(frozen=True)
class FeedStreamReport:
    source: str
    subject: str
    kind: str
    granularity: str
    retention_days: int
    first_event: datetime | None
    last_event: datetime | None
    watermark: datetime | None
    watermark_updated_at: datetime | None = None
    record_count: int = 0


@dataclass(frozen=True)
class FeedRecordReport:
    source: str
    subject: str
    kind: str
    granularity: str
    ts_event: datetime
    ts_ingested: datetime
    values: dict
    meta: dict


@dataclass(frozen=True)
class LifetimeReward:
    reward_pct: int  # the model's shares of every checkpoint, summed (frac64: 1e9 = one checkpoint's pool)
    paid_reward_pct: int  # of the PAID checkpoints
    checkpoints: int  # the checkpoints that ranked it


@dataclass(frozen=True)
class StoredLeaderboard:
    as_of: datetime
    entries: list[dict]
    meta: dict


@dataclass(frozen=True)
class LagReport:
    last_cycle_by_scope: dict[str, datetime | None]
    last_scored_cycle: datetime | None
    last_checkpoint_end: datetime | None
    last_leaderboard_as_of: datetime | None


class ReportStore:
    def __init__(self, engine: sa.Engine, slug: str):
        self.engine = engine
        self.slug = slug

    # --- predictions -----------------------------------------------------------------------------

    def predictions(
        self, *, model_id: str | None = None, model_ids: Sequence[str] | None = None, scope_key: str | None = None,
        status: str | None = None,
        start: datetime | None = None, end: datetime | None = None, after: tuple[datetime, int] | None = None,
        descending: bool = False, limit: int, with_input: bool = False,
        unresolved: str = "embargoed",
    ) -> list[PredictionReport]:
        """One page of predictions in [start, end), ordered by (cycle_at, id), after the cursor.

        `unresolved`: what becomes of predictions whose cycle is not resolved (cycle_resolved):
        "embargoed" (the default, what an open read gets) lists them without their content;
        "omitted" leaves them out (exports); "shown" shows everything (the operator)."""
        if unresolved not in UNRESOLVED_CHOICES:
            raise ValueError(f"unresolved must be one of {', '.join(UNRESOLVED_CHOICES)}, got {unresolved!r}")
        p, s, i = t.predictions, t.scores, t.inputs
        status_column = derived_prediction_status(p, s, i)
        if unresolved == "embargoed":
            resolved = cycle_resolved(p, s, i)
            output = sa.case((resolved, p.c.inference_output), else_=sa.null())
            reason = sa.case((sa.or_(resolved, p.c.status != PredictionStatus.FAILED), p.c.status_reason), else_=sa.null())
            embargoed = sa.not_(resolved)
        else:
            output, reason, embargoed = p.c.inference_output, p.c.status_reason, sa.false()
        columns = [p.c.id, p.c.model_id, p.c.scope_key, p.c.cycle_at, i.c.resolvable_at, status_column.label("status"),
                   reason.label("status_reason"), p.c.exec_time_ms, output.label("inference_output"), s.c.value,
                   s.c.success, s.c.failed_reason, (i.c.raw_data if with_input else sa.null()).label("input_data"),
                   embargoed.label("embargoed")]
        where = [p.c.competition == self.slug]
        if unresolved == "omitted":
            where.append(cycle_resolved(p, s, i))
        if model_id is not None:
            where.append(p.c.model_id == model_id)
        if model_ids is not None:
            where.append(p.c.model_id.in_(list(model_ids)))
        if scope_key is not None:
            where.append(p.c.scope_key == scope_key)
        if start is not None:
            where.append(p.c.cycle_at >= start)
        if end is not None:
            where.append(p.c.cycle_at < end)
        if status is not None:
            where.extend(_status_filter(status, p, s, i))
        if after is not None:
            # the plain bound lets the (.., cycle_at) indexes narrow the scan; the row comparison
            # breaks ties within one cycle
            if descending:
                where += [p.c.cycle_at <= after[0], sa.tuple_(p.c.cycle_at, p.c.id) < sa.tuple_(*after)]
            else:
                where += [p.c.cycle_at >= after[0], sa.tuple_(p.c.cycle_at, p.c.id) > sa.tuple_(*after)]
        order = (p.c.cycle_at.desc(), p.c.id.desc()) if descending else (p.c.cycle_at, p.c.id)
        query = (
            sa.select(*columns)
            .select_from(p.join(i, i.c.id == p.c.input_id).outerjoin(s, s.c.prediction_id == p.c.id))
            .where(*where).order_by(*order).limit(limit)
        )
        with self.engine.connect() as connection:
            return [PredictionReport(*row) for row in connection.execute(query)]

    def prediction_batches(
        self, model_id: str, start: datetime, end: datetime, batch_rows: int, *, unresolved: str = "omitted",
    ) -> Iterator[list[PredictionReport]]:
        """Every prediction of a model in [start, end), a page at a time (for streamed exports);
        by default without those whose cycle is not resolved (see predictions)."""
        after = None
        while True:
            page = self.predictions(model_id=model_id, start=start, end=end, after=after, limit=batch_rows,
                                    unresolved=unresolved)
            if page:
                yield page
            if len(page) < batch_rows:
                return
            after = (page[-1].cycle_at, page[-1].id)

    # --- snapshots -------------------------------------------------------------------------------

    def snapshots(
        self, *, model_id: str | None = None, scope_key: str | None = None, start: datetime | None = None,
        end: datetime | None = None, after: tuple[datetime, int] | None = None, limit: int,
    ) -> list[SnapshotReport]:
        sn = t.snapshots
        where = [sn.c.competition == self.slug]
        if model_id is not None:
            where.append(sn.c.model_id == model_id)
        if scope_key is not None:
            where.append(sn.c.scope_key == scope_key)
        if start is not None:
            where.append(sn.c.period_start >= start)
        if end is not None:
            where.append(sn.c.period_start < end)
        if after is not None:
            where += [sn.c.period_start >= after[0], sa.tuple_(sn.c.period_start, sn.c.id) > sa.tuple_(*after)]
        query = (
            sa.select(sn.c.id, sn.c.model_id, sn.c.scope_key, sn.c.period_start, sn.c.period_end, sn.c.prediction_count,
                      sn.c.value_sum, sn.c.result_summary, sn.c.status_counts)
            .where(*where).order_by(sn.c.period_start, sn.c.id).limit(limit)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).fetchall()
        return [SnapshotReport(r.id, r.model_id, r.scope_key, r.period_start, r.period_end, r.prediction_count,
                               r.value_sum / r.prediction_count if r.prediction_count else None,
                               r.result_summary or {}, r.status_counts or {}) for r in rows]

    # --- checkpoints -----------------------------------------------------------------------------

    def checkpoints(self, *, status: str | None = None, limit: int, offset: int = 0) -> list[CheckpointRow]:
        """The newest checkpoints first (by period), skipping the `offset` newest (a page)."""
        c = t.checkpoints
        query = sa.select(c).where(c.c.competition == self.slug)
        if status is not None:
            query = query.where(c.c.status == status)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(c.c.period_start.desc()).limit(limit).offset(offset)).fetchall()
        return [_checkpoint_row(row) for row in rows]

    def checkpoint_counts(self) -> dict[str, int]:
        """How many checkpoints are in each status."""
        c = t.checkpoints
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(c.c.status, sa.func.count()).where(c.c.competition == self.slug).group_by(c.c.status)
            ).fetchall()
        return {status: int(count) for status, count in rows}

    def lifetime_rewards(self) -> dict[str, LifetimeReward]:
        """Per model, the reward shares (frac64) of every checkpoint summed, those of PAID ones, and
        the checkpoints that ranked it: one aggregate over the checkpoints' rankings."""
        c = t.checkpoints
        row = sa.func.jsonb_array_elements(c.c.entries["ranking"]).table_valued("value").alias("row")
        model_id = row.c.value.op("->>")("model_id")
        reward = sa.cast(row.c.value.op("->>")("reward_pct"), sa.BigInteger)
        query = (
            sa.select(model_id.label("model_id"), sa.func.sum(reward), sa.func.sum(sa.case((c.c.status == CheckpointStatus.PAID, reward), else_=0)),
                      sa.func.count())
            .select_from(c).join(row, sa.true())
            .where(c.c.competition == self.slug)
            .group_by(model_id)
        )
        with self.engine.connect() as connection:
            return {m: LifetimeReward(int(total or 0), int(paid or 0), int(n)) for m, total, paid, n in connection.execute(query)}

    def latest_checkpoint(self) -> CheckpointRow | None:
        found = self.checkpoints(limit=1)
        return found[0] if found else None

    # --- feeds and lag ---------------------------------------------------------------------------

    def feeds(self) -> list[FeedStreamReport]:
        """The feed streams this competition subscribes to, with their first and last stored
        event and their record count (index lookups and an index-only count on the stream's
        unique key), and the ingestion watermark."""
        sub, r, st = t.feed_subscriptions, t.feed_records, t.feed_ingestion_state

        def same_stream(table):
            return sa.and_(table.c.source == sub.c.source, table.c.subject == sub.c.subject,
                           table.c.kind == sub.c.kind, table.c.granularity == sub.c.granularity)

        first = sa.select(sa.func.min(r.c.ts_event)).where(same_stream(r)).scalar_subquery()
        last = sa.select(sa.func.max(r.c.ts_event)).where(same_stream(r)).scalar_subquery()
        watermark = sa.select(st.c.last_event_ts).where(same_stream(st)).scalar_subquery()
        watermark_updated = sa.select(st.c.updated_at).where(same_stream(st)).scalar_subquery()
        count = sa.select(sa.func.count()).where(same_stream(r)).scalar_subquery()
        query = (
            sa.select(sub.c.source, sub.c.subject, sub.c.kind, sub.c.granularity, sub.c.retention_days,
                      first, last, watermark, watermark_updated, count)
            .where(sub.c.competition == self.slug)
            .order_by(sub.c.source, sub.c.subject, sub.c.kind, sub.c.granularity)
        )
        with self.engine.connect() as connection:
            return [FeedStreamReport(*row) for row in connection.execute(query)]

    def feed_tail(self, *, source: str | None = None, subject: str | None = None, kind: str | None = None,
                  granularity: str | None = None, limit: int) -> list[FeedRecordReport]:
        """The newest `limit` records of the competition's feed streams (those matching the
        filters), newest first: the newest rows of each stream by its unique key, then merged."""
        sub, r = t.feed_subscriptions, t.feed_records
        streams = sa.select(sub.c.source, sub.c.subject, sub.c.kind, sub.c.granularity).where(sub.c.competition == self.slug)
        for column, value in (("source", source), ("subject", subject), ("kind", kind), ("granularity", granularity)):
            if value is not None:
                streams = streams.where(sub.c[column] == value)
        streams = streams.subquery()
        newest = (
            sa.select(r.c.source, r.c.subject, r.c.kind, r.c.granularity, r.c.ts_event, r.c.ts_ingested,
                      r.c["values"], r.c.meta)
            .where(r.c.source == streams.c.source, r.c.subject == streams.c.subject, r.c.kind == streams.c.kind,
                   r.c.granularity == streams.c.granularity)
            .order_by(r.c.ts_event.desc()).limit(limit)
            .lateral()
        )
        query = sa.select(newest).select_from(streams.join(newest, sa.true())).order_by(
            newest.c.ts_event.desc(), newest.c.source, newest.c.subject).limit(limit)
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().fetchall()
        return [FeedRecordReport(row["source"], row["subject"], row["kind"], row["granularity"], row["ts_event"],
                                 row["ts_ingested"], row["values"] or {}, row["meta"] or {}) for row in rows]

    # --- leaderboards ----------------------------------------------------------------------------

    def leaderboards(self, start: datetime, end: datetime, limit: int) -> list[StoredLeaderboard]:
        """The stored leaderboards with as_of in [start, end), oldest first, at most `limit`."""
        lb = t.leaderboards
        query = (
            sa.select(lb.c.as_of, lb.c.entries, lb.c.meta)
            .where(lb.c.competition == self.slug, lb.c.as_of >= start, lb.c.as_of < end)
            .order_by(lb.c.as_of).limit(limit)
        )
        with self.engine.connect() as connection:
            return [StoredLeaderboard(row.as_of, row.entries or [], row.meta or {}) for row in connection.execute(query)]

    def lag(self, scope_keys: Sequence[str]) -> LagReport:
        i, s, c, lb = t.inputs, t.scores, t.checkpoints, t.leaderboards
        with self.engine.connect() as connection:
            cycles = {
                key: connection.execute(
                    sa.select(sa.func.max(i.c.cycle_at)).where(i.c.competition == self.slug, i.c.scope_key == key)
                ).scalar()
                for key in scope_keys
            }
            scored = connection.execute(sa.select(sa.func.max(s.c.cycle_at)).where(s.c.competition == self.slug)).scalar()
            checkpoint = connection.execute(
                sa.select(sa.func.max(c.c.period_end)).where(c.c.competition == self.slug)
            ).scalar()
            leaderboard = connection.execute(
                sa.select(sa.func.max(lb.c.as_of)).where(lb.c.competition == self.slug)
            ).scalar()
        return LagReport(cycles, scored, checkpoint, leaderboard)

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))


def _status_filter(status: str, p: sa.Table, s: sa.Table, i: sa.Table) -> list:
    if status == PredictionReportStatus.VOIDED:
        return [i.c.status == InputStatus.VOIDED]
    not_void = i.c.status != InputStatus.VOIDED
    if status == PredictionReportStatus.SCORED:
        return [not_void, p.c.status == PredictionStatus.PENDING, s.c.id.is_not(None)]
    if status == PredictionReportStatus.PENDING:
        return [not_void, p.c.status == PredictionStatus.PENDING, s.c.id.is_(None)]
    if status in (PredictionReportStatus.FAILED, PredictionReportStatus.ABSENT):
        return [not_void, p.c.status == status]
    raise ValueError(f"unknown prediction status {status!r}; one of {', '.join(PREDICTION_STATUSES)}")
