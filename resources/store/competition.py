"""One competition's rows: inputs, predictions, scores, rollups, leaderboards, checkpoints, models
and model events. All SQL on those tables is here; every method is one transaction."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any, Iterable, Iterator, Sequence

import psycopg2.extras
import sqlalchemy as sa

from resources.store import schema as t
from resources.store import json_codec
from resources.store.bulk import bulk_update, bulk_upsert, bulk_upsert_dicts, copy_field, insert_new
from resources.store.copies import CopyStore, replace_period_clusters
from resources.store.disputes import DisputeStore
from resources.store.history import HistoryStore
from resources.store.rules import RulesStore, record_documents
from resources.store.rows import (
    CheckpointRow,
    CycleRollupRow,
    CyclesWritten,
    CycleToSettle,
    CycleWrite,
    HealthRow,
    HourFingerprint,
    ModelEventRow,
    ModelRow,
    PredictionRow,
    Resolution,
    ResolvedAnswerRow,
    RulesDocument,
    ScoredPrediction,
    ScoreLeaf,
    ScoreRow,
    SettlementWritten,
    SnapshotRow,
    StoredPrediction,
    Voiding,
)
from resources.store.lifecycles import CheckpointStatus, InputStatus, PredictionReportStatus, PredictionStatus

# A checkpoint past PENDING committed its period's scores for good (a SKIPPED one too: its root is
# in every later chained root), so settlement never changes them.
LOCKED_STATUSES = (CheckpointStatus.SUBMITTED, CheckpointStatus.CLAIMABLE, CheckpointStatus.PAID, CheckpointStatus.SKIPPED)


def derived_prediction_status(p: sa.Table, s: sa.Table, i: sa.Table) -> sa.ColumnElement[str]:
    """A prediction's status as reported: VOIDED (its cycle is void), SCORED (answered and scored),
    else as made (PENDING, FAILED, ABSENT). Over predictions joined to inputs and outer-joined to scores."""
    return sa.case(
        (i.c.status == InputStatus.VOIDED, PredictionReportStatus.VOIDED),
        ((s.c.id.is_not(None)) & (p.c.status == PredictionStatus.PENDING), PredictionReportStatus.SCORED),
        else_=p.c.status,
    )


# A partial sync of the same list is written again at most this often: it would only move
# last_seen_at (a live run syncs its models before every cycle: 1,000 upserts a cycle otherwise).
PARTIAL_RESYNC_SECONDS = 300


class CompetitionStore:
    def __init__(self, engine: sa.Engine, slug: str):
        self.engine = engine
        self.slug = slug
        self._last_partial_sync: tuple[tuple, datetime] | None = None  # (the list as synced, seen_at)

    @property
    def copies(self) -> CopyStore:
        """Copy detection's reads and writes (outputs, clusters, the operator's resolutions)."""
        return CopyStore(self.engine, self.slug)

    @property
    def rules(self) -> RulesStore:
        """Rules fingerprints: their documents, and what each cycle was resolved under."""
        return RulesStore(self.engine, self.slug)

    @property
    def history(self) -> HistoryStore:
        """Past cycles as stored (read-only): what a what-if rescores and a shadow entry runs on."""
        return HistoryStore(self.engine, self.slug)

    @property
    def disputes(self) -> DisputeStore:
        """Checkpoint disputes (append-only)."""
        return DisputeStore(self.engine, self.slug)

    # --- cycles: inputs and predictions ----------------------------------------------------------

    def stored_cycles(self, start: datetime, end: datetime) -> set[tuple[datetime, str]]:
        i = t.inputs
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(i.c.cycle_at, i.c.scope_key).where(
                    i.c.competition == self.slug, i.c.cycle_at >= start, i.c.cycle_at < end
                )
            )
            return {(cycle_at, scope_key) for cycle_at, scope_key in rows}

    def write_cycles(self, cycles: Sequence[CycleWrite], events: Sequence[ModelEventRow]) -> CyclesWritten:
        """Inputs, their predictions and the model events they caused, in one transaction: a cycle
        is stored whole or not at all. A cycle another run stored first is left as it is."""
        if not cycles:
            return CyclesWritten(0, {})
        with self.engine.begin() as connection:
            self._write_events(connection, events)
            inputs = bulk_upsert(
                connection, t.inputs,
                ("competition", "scope_key", "cycle_at", "status", "received_at", "resolvable_at", "raw_data", "scope"),
                [(self.slug, c.input.scope_key, c.input.cycle_at, InputStatus.RECEIVED, c.input.cycle_at, c.input.resolvable_at,
                  c.input.raw_data, c.input.scope) for c in cycles],
                ("competition", "scope_key", "cycle_at"),
                returning=("id", "scope_key", "cycle_at"),
            )
            ids = {(scope_key, cycle_at): input_id for input_id, scope_key, cycle_at in inputs.returned}
            rows, by_status = [], defaultdict(int)
            for cycle in cycles:
                input_id = ids.get((cycle.input.scope_key, cycle.input.cycle_at))
                if input_id is None:
                    continue  # stored concurrently by another run: theirs stands
                for p in cycle.predictions:
                    rows.append((self.slug, input_id, p.model_id, cycle.input.scope_key, cycle.input.cycle_at,
                                 p.status, p.status_reason, p.exec_time_ms, p.inference_output, p.meta))
                    by_status[p.status] += 1
            bulk_upsert(
                connection, t.predictions,
                ("competition", "input_id", "model_id", "scope_key", "cycle_at", "status", "status_reason",
                 "exec_time_ms", "inference_output", "meta"),
                rows, ("input_id", "model_id"),
            )
        return CyclesWritten(len(ids), dict(by_status), frozenset((cycle_at, scope_key) for scope_key, cycle_at in ids))

    def _write_events(self, connection: sa.Connection, events: Sequence[ModelEventRow]) -> None:
        bulk_upsert(
            connection, t.model_events, ("competition", "model_id", "event", "at", "reason", "meta"),
            [(self.slug, e.model_id, e.event, e.at, e.reason, e.meta) for e in events],
            ("competition", "model_id", "event", "at"),
        )

    def cycle_prediction_counts(self, start: datetime, end: datetime) -> dict[tuple[datetime, str], int]:
        """(cycle_at, scope_key) -> predictions stored, for every input in [start, end)."""
        i, p = t.inputs, t.predictions
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(i.c.cycle_at, i.c.scope_key, sa.func.count(p.c.id))
                .outerjoin(p, p.c.input_id == i.c.id)
                .where(i.c.competition == self.slug, i.c.cycle_at >= start, i.c.cycle_at < end)
                .group_by(i.c.cycle_at, i.c.scope_key)
            ).fetchall()
        return {(row[0], row[1]): int(row[2]) for row in rows}

    def prediction_statuses(self, start: datetime, end: datetime) -> dict[str, int]:
        """Predictions of cycles in [start, end) by status: SCORED (answered and scored), PENDING
        (no score yet), FAILED / ABSENT (penalised or waiting), VOIDED (the cycle is void)."""
        totals: dict[str, int] = defaultdict(int)
        for counts in self.prediction_statuses_by_hour(start, end).values():
            for name, count in counts.items():
                totals[name] += count
        return dict(totals)

    def prediction_statuses_by_hour(self, start: datetime, end: datetime) -> dict[datetime, dict[str, int]]:
        """Each hour of [start, end) that has predictions: its predictions by status (see
        prediction_statuses), in one query."""
        p, s, i = t.predictions, t.scores, t.inputs
        status = derived_prediction_status(p, s, i)
        hour = sa.func.date_trunc("hour", p.c.cycle_at, "UTC")
        by_hour: dict[datetime, dict[str, int]] = defaultdict(dict)
        with self.engine.connect() as connection:
            for at, name, count in connection.execute(
                sa.select(hour, status, sa.func.count())
                .select_from(p.join(i, i.c.id == p.c.input_id).outerjoin(s, s.c.prediction_id == p.c.id))
                .where(p.c.competition == self.slug, p.c.cycle_at >= start, p.c.cycle_at < end)
                .group_by(hour, status)
            ):
                by_hour[at][name] = int(count)
        return dict(by_hour)

    def health_rows(self, model_ids: Sequence[str], before: datetime, lookback: int, since: datetime) -> list[HealthRow]:
        """Each model's last `lookback` predictions in [since, before), newest first."""
        p = t.predictions
        ranked = (
            sa.select(
                p.c.model_id, p.c.cycle_at, p.c.status, p.c.meta,
                sa.func.row_number().over(partition_by=p.c.model_id, order_by=p.c.cycle_at.desc()).label("recency"),
            )
            .where(p.c.competition == self.slug, p.c.model_id.in_(list(model_ids)), p.c.cycle_at < before,
                   p.c.cycle_at >= since)
            .subquery()
        )
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(ranked.c.model_id, ranked.c.cycle_at, ranked.c.status, ranked.c.meta)
                .where(ranked.c.recency <= lookback)
                .order_by(ranked.c.model_id, ranked.c.cycle_at.desc())
            ).fetchall()
        return [HealthRow(row.model_id, row.cycle_at, row.status, row.meta or {}) for row in rows]

    def latest_events(self, event: str, model_ids: Sequence[str], before: datetime,
                      since: datetime | None = None) -> dict[str, ModelEventRow]:
        """Each model's newest `event` strictly before `before` (and at or after `since`)."""
        e = t.model_events
        ranked = (
            sa.select(e.c.model_id, e.c.at, e.c.reason, e.c.meta,
                      sa.func.row_number().over(partition_by=e.c.model_id, order_by=e.c.at.desc()).label("recency"))
            .where(e.c.competition == self.slug, e.c.event == event, e.c.model_id.in_(list(model_ids)), e.c.at < before,
                   *([e.c.at >= since] if since is not None else []))
            .subquery()
        )
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(ranked).where(ranked.c.recency == 1)).fetchall()
        return {row.model_id: ModelEventRow(row.model_id, event, row.at, row.reason, row.meta or {}) for row in rows}

    def model_events(self, model_id: str | None = None, limit: int = 100) -> list[ModelEventRow]:
        e = t.model_events
        query = sa.select(e).where(e.c.competition == self.slug)
        if model_id is not None:
            query = query.where(e.c.model_id == model_id)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(e.c.at.desc(), e.c.id.desc()).limit(limit)).fetchall()
        return [ModelEventRow(row.model_id, row.event, row.at, row.reason, row.meta or {}) for row in rows]

    # --- settlement: ground truth and scores -----------------------------------------------------

    def locked_until(self) -> datetime | None:
        """The end of the last checkpoint period past PENDING: cycles before it are final."""
        c = t.checkpoints
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(sa.func.max(c.c.period_end)).where(
                    c.c.competition == self.slug, c.c.status.in_(LOCKED_STATUSES)
                )
            ).scalar()

    def cycles_to_settle(
        self, start: datetime, end: datetime, resolvable_until: datetime, not_before: datetime | None
    ) -> list[CycleToSettle]:
        """Cycles in [start, end) resolvable by `resolvable_until`, not resolved yet (RECEIVED) or
        voided (they may be resolved again), with their predictions that have no score."""
        i = t.inputs
        where = [i.c.competition == self.slug, i.c.cycle_at >= start, i.c.cycle_at < end,
                 i.c.resolvable_at <= resolvable_until, i.c.status.in_([InputStatus.RECEIVED, InputStatus.VOIDED])]
        if not_before is not None:
            where.append(i.c.cycle_at >= not_before)
        with self.engine.connect() as connection:
            inputs = connection.execute(
                sa.select(i.c.id, i.c.scope_key, i.c.cycle_at, i.c.resolvable_at, i.c.status, i.c.scope)
                .where(*where).order_by(i.c.cycle_at, i.c.scope_key)
            ).fetchall()
            if not inputs:
                return []
            # An unresolved or voided cycle has no score yet (a cycle is scored whole, in one
            # transaction). A raw cursor: tens of thousands of rows, no per-row Row objects.
            with connection.connection.dbapi_connection.cursor() as cursor:
                psycopg2.extras.register_default_jsonb(conn_or_curs=cursor, loads=json_codec.loads)
                cursor.execute(
                    "SELECT id, input_id, model_id, status, status_reason, inference_output FROM crunch.predictions "
                    "WHERE input_id = ANY(%s) ORDER BY input_id, model_id",
                    ([row.id for row in inputs],),
                )
                predictions = cursor.fetchall()
        by_input: dict[int, list[StoredPrediction]] = defaultdict(list)
        for pid, input_id, model_id, status, reason, output in predictions:
            by_input[input_id].append(StoredPrediction(pid, model_id, status, reason, output))
        return [
            CycleToSettle(row.id, row.scope_key, row.cycle_at, row.resolvable_at, row.status, row.scope or {},
                          by_input.get(row.id, []))
            for row in inputs
        ]

    def window_scores(
        self, scope_key: str, start: datetime, end: datetime
    ) -> tuple[dict[datetime, str], list[tuple[datetime, str, float]]]:
        """The windowed ensembles' read (crunch_assets/ensembles.py): ({cycle_at: status} of the
        scope's stored cycles in [start, end), [(cycle_at, model_id, value)] of their scores)."""
        i, s = t.inputs, t.scores
        with self.engine.connect() as connection:
            statuses = {row.cycle_at: row.status for row in connection.execute(
                sa.select(i.c.cycle_at, i.c.status).where(
                    i.c.competition == self.slug, i.c.scope_key == scope_key, i.c.cycle_at >= start, i.c.cycle_at < end))}
            values = [(row.cycle_at, row.model_id, row.value) for row in connection.execute(
                sa.select(s.c.cycle_at, s.c.model_id, s.c.value).where(
                    s.c.competition == self.slug, s.c.scope_key == scope_key, s.c.cycle_at >= start, s.c.cycle_at < end))]
        return statuses, values

    def add_predictions(self, input_id: int, scope_key: str, cycle_at: datetime,
                        predictions: Sequence[PredictionRow]) -> dict[str, int]:
        """Predictions added to a stored cycle (a windowed ensemble's, built when the cycle is
        scored): model_id -> prediction id. One already stored is kept as it is (its id returned)."""
        p = t.predictions
        with self.engine.begin() as connection:
            bulk_upsert(
                connection, p,
                ("competition", "input_id", "model_id", "scope_key", "cycle_at", "status", "status_reason",
                 "exec_time_ms", "inference_output", "meta"),
                [(self.slug, input_id, r.model_id, scope_key, cycle_at, r.status, r.status_reason, r.exec_time_ms,
                  r.inference_output, r.meta) for r in predictions],
                ("input_id", "model_id"),
            )
            return {row.model_id: row.id for row in connection.execute(
                sa.select(p.c.model_id, p.c.id).where(p.c.input_id == input_id,
                                                      p.c.model_id.in_([r.model_id for r in predictions])))}

    def write_settlement(
        self, scores: Sequence[ScoreRow], resolutions: Sequence[Resolution], voidings: Sequence[Voiding],
        rules_documents: Sequence[RulesDocument] = (),
    ) -> SettlementWritten:
        """Scores (once per prediction), resolved cycles (truth, failure value and the rules
        fingerprint they were scored under) and voided cycles, in one transaction, with the
        documents of the fingerprints they name. A voided cycle's predictions keep their made status."""
        with self.engine.begin() as connection:
            record_documents(connection, self.slug, rules_documents)
            written = insert_new(
                connection, t.scores,
                ("competition", "prediction_id", "model_id", "scope_key", "cycle_at", "value", "success",
                 "failed_reason", "result"),
                [(self.slug, *r) for r in scores],  # ScoreRow's fields are the columns' order
                ("prediction_id",), copy_lines=self._score_lines,
            )
            i = t.inputs
            bulk_update(
                connection, i, "id", ("status", "actuals", "failure_value", "rules_fingerprint"),
                [(r.input_id, InputStatus.RESOLVED, r.actuals, r.failure_value, r.rules_fingerprint) for r in resolutions],
                extra_set="meta = stored.meta - 'void_reason'",
            )
            if voidings:
                connection.execute(
                    sa.update(i).where(i.c.id == sa.bindparam("input_id"))
                    .values(status=InputStatus.VOIDED, rules_fingerprint=sa.bindparam("fingerprint"),
                            meta=i.c.meta.op("||")(sa.func.jsonb_build_object("void_reason", sa.bindparam("reason")))),
                    [{"input_id": v.input_id, "reason": v.reason, "fingerprint": v.rules_fingerprint} for v in voidings],
                )
        return SettlementWritten(written, len(resolutions), len(voidings))

    def _score_lines(self, rows: Sequence[tuple]) -> Iterator[str]:
        """COPY text of score rows, formatted directly (the scores step's hot path)."""
        competition = copy_field(self.slug)
        times: dict[datetime, str] = {}
        names: dict[str, str] = {}  # model ids and scope keys repeat: each is escaped once
        dumps = json_codec.dumps
        for offset in range(0, len(rows), 2000):
            lines = []
            for _, pid, model_id, scope_key, cycle_at, value, success, reason, result in rows[offset : offset + 2000]:
                at = times.get(cycle_at)
                if at is None:
                    at = times[cycle_at] = cycle_at.isoformat()
                model = names.get(model_id)
                if model is None:
                    model = names[model_id] = copy_field(model_id)
                scope = names.get(scope_key)
                if scope is None:
                    scope = names[scope_key] = copy_field(scope_key)
                encoded = dumps(result)
                if "\\" in encoded:  # JSON text holds no raw tab, newline or CR: only a backslash needs escaping
                    encoded = copy_field(encoded)
                lines.append(
                    f"{competition}\t{pid}\t{model}\t{scope}\t{at}\t{value!r}\t{'t' if success else 'f'}\t"
                    f"{copy_field(reason)}\t{encoded}\n"
                )
            yield "".join(lines)

    def unsettled_count(self, start: datetime, end: datetime) -> int:
        """Predictions of cycles in [start, end) with no score, in cycles not voided."""
        return sum(self.unsettled_by_hour(start, end).values())

    def unsettled_by_hour(self, start: datetime, end: datetime) -> dict[datetime, int]:
        """Each hour of [start, end) with unsettled predictions (see unsettled_count): how many, in
        one query."""
        p, s, i = t.predictions, t.scores, t.inputs
        hour = sa.func.date_trunc("hour", p.c.cycle_at, "UTC")
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(hour, sa.func.count())
                .select_from(p.join(i, i.c.id == p.c.input_id).outerjoin(s, s.c.prediction_id == p.c.id))
                .where(p.c.competition == self.slug, p.c.cycle_at >= start, p.c.cycle_at < end,
                       s.c.id.is_(None), i.c.status != InputStatus.VOIDED)
                .group_by(hour)
            ).fetchall()
        return {at: int(count) for at, count in rows}

    def unsettled_hours(self, resolvable_after: datetime | None, resolvable_until: datetime) -> list[datetime]:
        """Hours holding cycles that resolve in (resolvable_after, resolvable_until] and are not
        resolved (RECEIVED), for the settlement sensor."""
        i = t.inputs
        where = [i.c.competition == self.slug, i.c.status == InputStatus.RECEIVED, i.c.resolvable_at <= resolvable_until]
        if resolvable_after is not None:
            where.append(i.c.resolvable_at > resolvable_after)
        hour = sa.func.date_trunc("hour", i.c.cycle_at, "UTC")
        with self.engine.connect() as connection:
            return sorted(connection.execute(sa.select(hour).where(*where).group_by(hour)).scalars().all())

    def overdue_hours(self, resolvable_before: datetime) -> list[datetime]:
        """Hours holding unresolved (RECEIVED) cycles that resolved before `resolvable_before`."""
        i = t.inputs
        hour = sa.func.date_trunc("hour", i.c.cycle_at, "UTC")
        with self.engine.connect() as connection:
            return sorted(connection.execute(
                sa.select(hour).where(i.c.competition == self.slug, i.c.status == InputStatus.RECEIVED,
                                      i.c.resolvable_at <= resolvable_before).group_by(hour)
            ).scalars().all())

    def change_marker(self) -> str:
        """Moves whenever a score is written or a cycle is voided (the rollup sensor's cursor)."""
        s, i = t.scores, t.inputs
        with self.engine.connect() as connection:
            last_score = connection.execute(sa.select(sa.func.max(s.c.id)).where(s.c.competition == self.slug)).scalar()
            voided = connection.execute(
                sa.select(sa.func.count()).where(i.c.competition == self.slug, i.c.status == InputStatus.VOIDED)
            ).scalar_one()
        return f"{last_score or 0}:{voided}"

    def changed_days(self, since_score_id: int) -> tuple[datetime | None, datetime | None]:
        """(first, last) cycle time of the scores written after `since_score_id`."""
        s = t.scores
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(sa.func.min(s.c.cycle_at), sa.func.max(s.c.cycle_at)).where(
                    s.c.competition == self.slug, s.c.id > since_score_id
                )
            ).one()
        return row[0], row[1]

    def voided_days(self, since: datetime | None) -> list[datetime]:
        """Days holding voided cycles (at or after `since`)."""
        i = t.inputs
        day = sa.func.date_trunc("day", i.c.cycle_at, "UTC")
        where = [i.c.competition == self.slug, i.c.status == InputStatus.VOIDED]
        if since is not None:
            where.append(i.c.cycle_at >= since)
        with self.engine.connect() as connection:
            return sorted(connection.execute(sa.select(day).where(*where).group_by(day)).scalars().all())

    def summarised_count(self, start: datetime, end: datetime) -> int:
        """Score rows accounted for by the snapshots of hours starting in [start, end)."""
        s = t.snapshots
        with self.engine.connect() as connection:
            return int(connection.execute(
                sa.select(sa.func.coalesce(sa.func.sum(s.c.prediction_count), 0)).where(
                    s.c.competition == self.slug, s.c.period_start >= start, s.c.period_start < end
                )
            ).scalar_one())

    def score_value_problems(self, start: datetime, end: datetime) -> tuple[int, int, int]:
        """(scores, non-finite values, duplicates) of cycles in [start, end). A duplicate is a
        score beyond the first for one prediction, or for one model, scope and cycle: the database's
        unique keys refuse both, so any found means they were bypassed (dropped, or rows written
        around them), and a mean over such scores would count an answer twice."""
        s = t.scores
        bad = sa.or_(s.c.value == float("nan"), s.c.value == float("inf"), s.c.value == float("-inf"))
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(sa.func.count(), sa.func.count().filter(bad),
                          sa.func.count(sa.distinct(s.c.prediction_id)),
                          sa.func.count(sa.distinct(sa.tuple_(s.c.model_id, s.c.scope_key, s.c.cycle_at)))).where(
                    s.c.competition == self.slug, s.c.cycle_at >= start, s.c.cycle_at < end
                )
            ).one()
        scores = int(row[0])
        return scores, int(row[1]), scores - min(int(row[2]), int(row[3]))

    def cycle_truths(self, start: datetime, end: datetime) -> dict[tuple[datetime, str], Any]:
        i = t.inputs
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(i.c.cycle_at, i.c.scope_key, i.c.actuals).where(
                    i.c.competition == self.slug, i.c.cycle_at >= start, i.c.cycle_at < end, i.c.status == InputStatus.RESOLVED
                )
            )
            return {(row.cycle_at, row.scope_key): row.actuals for row in rows}

    # --- rollups: snapshots and cycle rollups ----------------------------------------------------

    def hour_fingerprints(self, start: datetime, end: datetime) -> dict[tuple[str, datetime], HourFingerprint]:
        """(scope_key, hour) -> what its rollup depends on, computed from inputs and scores now."""
        i, s = t.inputs, t.scores
        input_hour = sa.func.date_trunc("hour", i.c.cycle_at, "UTC").label("hour")
        score_hour = sa.func.date_trunc("hour", s.c.cycle_at, "UTC").label("hour")
        with self.engine.connect() as connection:
            cycles = connection.execute(
                sa.select(i.c.scope_key, input_hour,
                          sa.func.count().filter(i.c.status == InputStatus.RESOLVED),
                          sa.func.count().filter(i.c.status == InputStatus.VOIDED),
                          sa.func.coalesce(sa.func.sum(i.c.failure_value).filter(i.c.status == InputStatus.RESOLVED), 0.0))
                .where(i.c.competition == self.slug, i.c.cycle_at >= start, i.c.cycle_at < end)
                .group_by(i.c.scope_key, input_hour)
            ).fetchall()
            scores = connection.execute(
                sa.select(s.c.scope_key, score_hour, sa.func.count(), sa.func.max(s.c.id))
                .where(s.c.competition == self.slug, s.c.cycle_at >= start, s.c.cycle_at < end)
                .group_by(s.c.scope_key, score_hour)
            ).fetchall()
        counted = {(row[0], row[1]): (int(row[2]), row[3]) for row in scores}
        return {
            (scope_key, hour): HourFingerprint(int(resolved), int(voided), float(failure_sum),
                                               *counted.get((scope_key, hour), (0, None)))
            for scope_key, hour, resolved, voided, failure_sum in cycles
        }

    def stored_rollups(self, start: datetime, end: datetime) -> list[CycleRollupRow]:
        r = t.cycle_rollups
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(r.c.scope_key, r.c.period_start, r.c.period_end, r.c.cycle_count, r.c.voided_count,
                          r.c.failure_value_sum, r.c.score_count, r.c.last_score_id)
                .where(r.c.competition == self.slug, r.c.period_start >= start, r.c.period_start < end)
                .order_by(r.c.period_start, r.c.scope_key)
            ).fetchall()
        return [CycleRollupRow(*row) for row in rows]

    def scored_predictions(self, hours: Iterable[tuple[str, datetime]]) -> list[ScoredPrediction]:
        """Every score of the given (scope_key, hour)s, with its prediction's made status and its
        cycle's failure value."""
        hours = sorted(set(hours), key=lambda item: (item[1], item[0]))
        if not hours:
            return []
        s, p, i = t.scores, t.predictions, t.inputs
        hour = sa.func.date_trunc("hour", s.c.cycle_at, "UTC")
        wanted = sa.tuple_(s.c.scope_key, hour).in_([sa.tuple_(k, h) for k, h in hours])
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(s.c.id, s.c.model_id, s.c.scope_key, s.c.cycle_at, p.c.input_id, s.c.value, s.c.success,
                          p.c.status, s.c.result, i.c.failure_value)
                .select_from(s.join(p, p.c.id == s.c.prediction_id).join(i, i.c.id == p.c.input_id))
                .where(s.c.competition == self.slug, s.c.cycle_at >= hours[0][1],
                       s.c.cycle_at < max(h for _, h in hours) + timedelta(hours=1), wanted)
                .order_by(s.c.cycle_at, s.c.scope_key, s.c.model_id)
            ).fetchall()
        return [ScoredPrediction(*row) for row in rows]

    def hours_without_metrics(self, start: datetime, end: datetime) -> set[tuple[str, datetime]]:
        """(scope_key, hour)s of [start, end) with a snapshot that has no metric statistics (rolled
        up before the competition declared its metrics)."""
        s = t.snapshots
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(s.c.scope_key, s.c.period_start).distinct()
                .where(s.c.competition == self.slug, s.c.period_start >= start, s.c.period_start < end,
                       sa.not_(s.c.meta.has_key("metrics")))
            ).fetchall()
        return {(row.scope_key, row.period_start) for row in rows}

    def resolved_answers(self, hours: Iterable[tuple[str, datetime]]) -> list[ResolvedAnswerRow]:
        """Every prediction of the resolved cycles of the given (scope_key, hour)s, with the cycle's
        truth and failure value and the prediction's score, in (cycle, scope, model) order: what the
        hourly metrics are computed from (crunch_assets/metrics.py)."""
        hours = sorted(set(hours), key=lambda item: (item[1], item[0]))
        if not hours:
            return []
        with self.engine.connect() as connection:
            with connection.connection.dbapi_connection.cursor() as cursor:
                psycopg2.extras.register_default_jsonb(conn_or_curs=cursor, loads=json_codec.loads)
                cursor.execute(
                    "SELECT i.scope_key, i.cycle_at, i.actuals, i.failure_value, p.model_id, p.status, "
                    "p.inference_output, p.meta, s.value, s.success "
                    "FROM crunch.inputs i JOIN crunch.predictions p ON p.input_id = i.id "
                    "LEFT JOIN crunch.scores s ON s.prediction_id = p.id "
                    "WHERE i.competition = %(slug)s AND i.status = 'RESOLVED' AND i.cycle_at >= %(start)s "
                    "AND i.cycle_at < %(end)s AND (i.scope_key, date_trunc('hour', i.cycle_at, 'UTC')) "
                    "IN (SELECT * FROM unnest(%(scopes)s::text[], %(hours)s::timestamptz[])) "
                    "ORDER BY i.cycle_at, i.scope_key, p.model_id",
                    {"slug": self.slug, "start": hours[0][1], "end": max(h for _, h in hours) + timedelta(hours=1),
                     "scopes": [k for k, _ in hours], "hours": [h for _, h in hours]},
                )
                return [ResolvedAnswerRow(*row) for row in cursor.fetchall()]

    def write_rollups(self, snapshots: Sequence[SnapshotRow], rollups: Sequence[CycleRollupRow]) -> int:
        """Snapshots and cycle rollups, one transaction; returns snapshot rows written or changed."""
        with self.engine.begin() as connection:
            written = bulk_upsert(
                connection, t.snapshots,
                ("competition", "model_id", "scope_key", "period_start", "period_end", "prediction_count",
                 "value_sum", "failure_value_sum", "result_summary", "status_counts", "meta"),
                [(self.slug, r.model_id, r.scope_key, r.period_start, r.period_end, r.prediction_count, r.value_sum,
                  r.failure_value_sum, r.result_summary, r.status_counts, r.meta) for r in snapshots],
                ("competition", "model_id", "scope_key", "period_start", "period_end"),
                update_columns=("prediction_count", "value_sum", "failure_value_sum", "result_summary", "status_counts",
                                "meta"),
            ).written
            bulk_upsert(
                connection, t.cycle_rollups,
                ("competition", "scope_key", "period_start", "period_end", "cycle_count", "voided_count",
                 "failure_value_sum", "score_count", "last_score_id"),
                [(self.slug, r.scope_key, r.period_start, r.period_end, r.cycle_count, r.voided_count,
                  r.failure_value_sum, r.score_count, r.last_score_id) for r in rollups],
                ("competition", "scope_key", "period_start", "period_end"),
                update_columns=("cycle_count", "voided_count", "failure_value_sum", "score_count", "last_score_id"),
            )
        return written

    def snapshots(self, start: datetime, end: datetime, model_id: str | None = None) -> list[SnapshotRow]:
        """Hourly snapshots whose period starts in [start, end): half-open, so a boundary hour is
        never counted in two windows."""
        s = t.snapshots
        query = (
            sa.select(s.c.model_id, s.c.scope_key, s.c.period_start, s.c.period_end, s.c.prediction_count,
                      s.c.value_sum, s.c.failure_value_sum, s.c.result_summary, s.c.status_counts, s.c.meta)
            .where(s.c.competition == self.slug, s.c.period_start >= start, s.c.period_start < end)
            .order_by(s.c.period_start, s.c.scope_key, s.c.model_id)
        )
        if model_id is not None:
            query = query.where(s.c.model_id == model_id)
        with self.engine.connect() as connection:
            return [SnapshotRow(*row) for row in connection.execute(query)]

    # --- leaderboards ----------------------------------------------------------------------------

    def write_leaderboard(self, as_of: datetime, entries: list[dict], meta: dict) -> None:
        with self.engine.begin() as connection:
            bulk_upsert(
                connection, t.leaderboards, ("competition", "as_of", "entries", "meta"),
                [(self.slug, as_of, entries, meta)], ("competition", "as_of"), update_columns=("entries", "meta"),
            )

    def write_live_leaderboard(self, as_of: datetime, entries: list[dict], meta: dict) -> bool:
        """The live leaderboard as of `as_of` (meta `live: true`), replacing the live one stored
        earlier in the same hour: one live row per hour, the newest. A row older than the hour's
        live row is not written (a slower run's last tick never moves the leaderboard back);
        returns whether it was written."""
        lb = t.leaderboards
        hour = as_of.replace(minute=0, second=0, microsecond=0)
        is_live = lb.c.meta["live"].as_boolean().is_(True)
        same_hour_live = sa.and_(lb.c.competition == self.slug, lb.c.as_of >= hour, lb.c.as_of < hour + timedelta(hours=1), is_live)
        with self.engine.begin() as connection:
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"live_leaderboard|{self.slug}"})
            newest = connection.execute(sa.select(sa.func.max(lb.c.as_of)).where(same_hour_live)).scalar()
            if newest is not None and newest > as_of:
                return False
            if connection.execute(sa.select(lb.c.id).where(lb.c.competition == self.slug, lb.c.as_of == as_of,
                                                           sa.not_(is_live))).first():
                return False  # a daily leaderboard at this very instant stands
            # the hour's live row moves forward in place: the engine role may UPDATE leaderboards, never DELETE
            moved = connection.execute(sa.update(lb).where(same_hour_live).values(
                as_of=as_of, entries=entries, meta={**meta, "live": True})).rowcount
            if not moved:
                bulk_upsert(
                    connection, lb, ("competition", "as_of", "entries", "meta"),
                    [(self.slug, as_of, entries, {**meta, "live": True})], ("competition", "as_of"),
                    update_columns=("entries", "meta"),
                )
        return True

    def last_scored_cycle(self) -> datetime | None:
        """The newest cycle with a score (what a live leaderboard is as of)."""
        s = t.scores
        with self.engine.connect() as connection:
            return connection.execute(sa.select(sa.func.max(s.c.cycle_at)).where(s.c.competition == self.slug)).scalar()

    def leaderboard(self, as_of: datetime | None = None) -> tuple[datetime, list[dict], dict] | None:
        """The newest leaderboard at or before `as_of` (None: the newest of all)."""
        lb = t.leaderboards
        query = sa.select(lb.c.as_of, lb.c.entries, lb.c.meta).where(lb.c.competition == self.slug)
        if as_of is not None:
            query = query.where(lb.c.as_of <= as_of)
        with self.engine.connect() as connection:
            row = connection.execute(query.order_by(lb.c.as_of.desc()).limit(1)).first()
        return (row.as_of, row.entries, row.meta) if row else None

    # --- checkpoints -----------------------------------------------------------------------------

    def checkpoint(self, period_start: datetime, period_end: datetime) -> CheckpointRow | None:
        c = t.checkpoints
        return self._one_checkpoint((c.c.period_start == period_start) & (c.c.period_end == period_end))

    def checkpoint_by_id(self, checkpoint_id: int) -> CheckpointRow | None:
        return self._one_checkpoint(t.checkpoints.c.id == checkpoint_id)

    def previous_checkpoint(self, before: datetime) -> CheckpointRow | None:
        """The checkpoint with the latest period ending at or before `before`."""
        c = t.checkpoints
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(c).where(c.c.competition == self.slug, c.c.period_end <= before)
                .order_by(c.c.period_end.desc()).limit(1)
            ).first()
        return _checkpoint_row(row) if row else None

    def checkpoints(self, limit: int | None = None, descending: bool = False) -> list[CheckpointRow]:
        c = t.checkpoints
        query = sa.select(c).where(c.c.competition == self.slug).order_by(
            c.c.period_start.desc() if descending else c.c.period_start
        )
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [_checkpoint_row(row) for row in connection.execute(query)]

    def _one_checkpoint(self, condition) -> CheckpointRow | None:
        c = t.checkpoints
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(c).where(c.c.competition == self.slug, condition)).first()
        return _checkpoint_row(row) if row else None

    def write_pending_checkpoint(
        self, period_start: datetime, period_end: datetime, entries: dict, merkle_root: str, chained_root: str,
        meta: dict, commitment_scheme: int,
    ) -> CheckpointRow:
        """Store (or replace) the period's checkpoint while it is PENDING, and with it the period's
        copy clusters (entries["copy_clusters"], in the same transaction). A checkpoint past PENDING
        is returned unchanged: paid money does not move (and the database refuses it: migration
        0006's guard, which also sets updated_at on every change and stores it PENDING)."""
        c = t.checkpoints
        with self.engine.begin() as connection:
            existing = connection.execute(
                sa.select(c).where(c.c.competition == self.slug, c.c.period_start == period_start,
                                   c.c.period_end == period_end).with_for_update()
            ).first()
            if existing is not None and existing.status != CheckpointStatus.PENDING:
                return _checkpoint_row(existing)
            bulk_upsert_dicts(
                connection, c,
                [{"competition": self.slug, "period_start": period_start, "period_end": period_end,
                  "entries": entries, "merkle_root": merkle_root, "chained_root": chained_root, "meta": meta,
                  "commitment_scheme": commitment_scheme}],
                ("competition", "period_start", "period_end"),
                update_columns=("entries", "merkle_root", "chained_root", "meta", "commitment_scheme"),
            )
            replace_period_clusters(connection, self.slug, period_start, period_end, entries.get("copy_clusters", []))
            row = connection.execute(
                sa.select(c).where(c.c.competition == self.slug, c.c.period_start == period_start,
                                   c.c.period_end == period_end)
            ).one()
        return _checkpoint_row(row)

    def score_leaves(self, start: datetime, end: datetime) -> list[ScoreLeaf]:
        """Every score of cycles in [start, end) with the output and truth it was computed from,
        in (cycle_at, scope_key, model_id) order: what a checkpoint commits to."""
        s, p, i = t.scores, t.predictions, t.inputs
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(s.c.model_id, s.c.scope_key, s.c.cycle_at, p.c.inference_output, i.c.actuals, s.c.value)
                .select_from(s.join(p, p.c.id == s.c.prediction_id).join(i, i.c.id == p.c.input_id))
                # a score's prediction and input have its cycle_at: restricting them as well keeps
                # the join to the period (no scan of every stored prediction: bench_rollups.py)
                .where(s.c.competition == self.slug, s.c.cycle_at >= start, s.c.cycle_at < end,
                       p.c.competition == self.slug, p.c.cycle_at >= start, p.c.cycle_at < end,
                       i.c.competition == self.slug, i.c.cycle_at >= start, i.c.cycle_at < end)
                .order_by(s.c.cycle_at, s.c.scope_key, s.c.model_id)
            )
            return [ScoreLeaf(*row) for row in rows]

    def score_count(self, start: datetime, end: datetime) -> int:
        """Scores stored for cycles in [start, end)."""
        s = t.scores
        with self.engine.connect() as connection:
            return int(connection.execute(
                sa.select(sa.func.count()).where(s.c.competition == self.slug, s.c.cycle_at >= start, s.c.cycle_at < end)
            ).scalar_one())

    def period_fingerprint(self, start: datetime, end: datetime) -> dict:
        """What a checkpoint of [start, end) depends on in the store."""
        s, i = t.scores, t.inputs
        with self.engine.connect() as connection:
            scores = connection.execute(
                sa.select(sa.func.count(), sa.func.max(s.c.id)).where(
                    s.c.competition == self.slug, s.c.cycle_at >= start, s.c.cycle_at < end
                )
            ).one()
            voided = connection.execute(
                sa.select(sa.func.count()).where(
                    i.c.competition == self.slug, i.c.cycle_at >= start, i.c.cycle_at < end, i.c.status == InputStatus.VOIDED
                )
            ).scalar_one()
        resolution = self.copies.latest_resolution_id(start, end)
        return {"scores": int(scores[0]), "last_score_id": scores[1], "voided_cycles": int(voided),
                "copy_resolution_id": resolution}

    def first_cycle_since(self, since: datetime) -> datetime | None:
        i = t.inputs
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(sa.func.min(i.c.cycle_at)).where(i.c.competition == self.slug, i.c.cycle_at >= since)
            ).scalar()

    # --- the model registry ----------------------------------------------------------------------

    def sync_models(self, listed: Sequence[Any], seen_at: datetime, *, complete: bool) -> list[ModelEventRow]:
        """Record the runner's models (objects with model_id, name, player_id, player_name,
        deployment_id, state, meta). Identity and state are replaced; first and last seen only
        widen; a new cruncher gets the next cruncher_index. With `complete`, the list is the whole
        registry and models not in it become GONE. Joins, leaves and state changes are recorded as
        model_events; returns them.

        A partial sync (`complete=False`) of exactly the list this store synced last, less than
        PARTIAL_RESYNC_SECONDS later, writes nothing: it could only widen last_seen_at, which thus
        lags by up to that much (a new model, a changed identity or state, time going backwards, or
        a complete sync, are written at once)."""
        m = t.models
        listing = None
        if not complete:
            listing = tuple((info.model_id, info.name, info.player_id, info.player_name, info.deployment_id, info.state,
                              json.dumps(info.meta, sort_keys=True, default=str)) for info in listed)
            last = self._last_partial_sync
            if last is not None and last[0] == listing and \
                    timedelta(0) <= seen_at - last[1] < timedelta(seconds=PARTIAL_RESYNC_SECONDS):
                return []
        with self.engine.begin() as connection:
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"models|{self.slug}"})
            known = {
                row.model_id: row for row in connection.execute(
                    sa.select(m.c.model_id, m.c.state, m.c.player_id, m.c.cruncher_index).where(m.c.competition == self.slug)
                )
            }
            index_of = {(row.player_id or row.model_id): row.cruncher_index for row in known.values()
                        if row.cruncher_index is not None}
            next_index = max(index_of.values(), default=-1) + 1
            events, rows = [], []
            for info in listed:
                cruncher = info.player_id or info.model_id
                if cruncher not in index_of:
                    index_of[cruncher] = next_index
                    next_index += 1
                previous = known.get(info.model_id)
                if previous is None:
                    events.append(ModelEventRow(info.model_id, "JOINED", seen_at, info.state))
                elif previous.state != info.state and complete:
                    events.append(ModelEventRow(info.model_id, "STATE_CHANGED", seen_at, f"{previous.state} -> {info.state}"))
                rows.append({
                    "competition": self.slug, "model_id": info.model_id, "name": info.name, "player_id": info.player_id,
                    "player_name": info.player_name, "deployment_identifier": info.deployment_id, "state": info.state,
                    "cruncher_index": index_of[cruncher], "first_seen_at": seen_at, "last_seen_at": seen_at,
                    "meta": info.meta,
                })
            if rows:
                statement = sa.dialects.postgresql.insert(m).values(rows)
                identity = ("name", "player_id", "player_name", "deployment_identifier", "meta")
                set_ = {name: statement.excluded[name] for name in identity}
                set_["first_seen_at"] = sa.func.least(m.c.first_seen_at, statement.excluded.first_seen_at)
                set_["last_seen_at"] = sa.func.greatest(m.c.last_seen_at, statement.excluded.last_seen_at)
                set_["cruncher_index"] = sa.func.coalesce(m.c.cruncher_index, statement.excluded.cruncher_index)
                if complete:
                    set_["state"] = statement.excluded.state
                connection.execute(statement.on_conflict_do_update(index_elements=["competition", "model_id"], set_=set_))
            if complete:
                listed_ids = {info.model_id for info in listed}
                gone = sorted(mid for mid, row in known.items() if mid not in listed_ids and row.state != "GONE")
                if gone:
                    connection.execute(sa.update(m).where(m.c.competition == self.slug, m.c.model_id.in_(gone)).values(state="GONE"))
                    events += [ModelEventRow(mid, "LEFT", seen_at, "no longer listed by the model runner") for mid in gone]
            self._write_events(connection, events)
        self._last_partial_sync = (listing, seen_at) if listing is not None else None
        return events

    def models(self) -> list[ModelRow]:
        m = t.models
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(m.c.model_id, m.c.name, m.c.player_id, m.c.player_name, m.c.deployment_identifier, m.c.state,
                          m.c.cruncher_index, m.c.first_seen_at, m.c.last_seen_at, m.c.meta)
                .where(m.c.competition == self.slug).order_by(m.c.model_id)
            ).fetchall()
        return [ModelRow(*row) for row in rows]


def _checkpoint_row(row) -> CheckpointRow:
    return CheckpointRow(
        id=row.id, period_start=row.period_start, period_end=row.period_end, status=row.status, tx_hash=row.tx_hash,
        submitted_at=row.submitted_at, entries=row.entries, merkle_root=row.merkle_root, chained_root=row.chained_root,
        meta=row.meta or {}, created_at=row.created_at, updated_at=row.updated_at, gate=row.gate,
        commitment_scheme=row.commitment_scheme,
    )
