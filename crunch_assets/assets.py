"""The asset chain of one competition: feed -> predictions -> scores -> snapshots -> leaderboard
-> emission checkpoints.

Every asset computes from its partition window and what is stored for it, and writes with
idempotent upserts. `as_of` (run config) says how far into the window a live run may go; a
backfill leaves it unset and processes the whole window, through the same code.
"""


import bisect
import math
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import dagster as dg
import sqlalchemy as sa

from crunch_assets import checks
from crunch_assets import store_queries as q
from crunch_assets.model_health import QUARANTINE_META_KEY, QuarantinePolicy, load_health
from crunch_assets.partitions import CompetitionPartitions
from crunch_assets.ranking import FRAC64_ONE, emission_payload, rank_models, weighted_means, window_scores
from crunch_assets.rules import CompetitionRules
from crunch_assets.spec import CompetitionSpec, Scope
from resources.feeds.base import Candle, FeedResource
from resources.model_runners.base import CallStatus, ModelCallResult, ModelRunnerResource
from resources.store import schema as t
from resources.store.database import CrunchDatabase, upsert

CYCLES_PER_WRITE = 30  # a backfill writes every 30 cycles: bounded memory, few statements


class WindowRunConfig(dg.Config):
    """Run config shared by the chain's assets."""

    as_of: str | None = None  # ISO-8601 UTC instant; unset: the partition window's end


def resolve_as_of(config: WindowRunConfig, window: dg.TimeWindow, wait_up_to_seconds: float = 0.0) -> datetime:
    """How far into the window this run goes: never past the window, never into the future. A live
    run launched ahead of its cycle (at most wait_up_to_seconds early) waits for the cycle time."""
    wanted = datetime.fromisoformat(config.as_of) if config.as_of else window.end
    if wanted.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware UTC, got {config.as_of!r}")
    early_seconds = (wanted - datetime.now(timezone.utc)).total_seconds()
    if config.as_of and 0 < early_seconds <= wait_up_to_seconds:
        time.sleep(early_seconds)
    return min(wanted.astimezone(timezone.utc), window.end, datetime.now(timezone.utc))


def as_of_run_config(op_names: list[str], as_of: datetime) -> dict:
    return {"ops": {name: {"config": {"as_of": as_of.isoformat()}} for name in op_names}}


@dataclass(frozen=True)
class ChainKeys:
    feed_records: dg.AssetKey
    predictions: dg.AssetKey
    scores: dg.AssetKey
    snapshots: dg.AssetKey
    leaderboard: dg.AssetKey
    emission_checkpoints: dg.AssetKey

    @classmethod
    def for_slug(cls, slug: str) -> "ChainKeys":
        return cls(**{name: dg.AssetKey([slug, name]) for name in cls.__dataclass_fields__})

    @staticmethod
    def op_name(key: dg.AssetKey) -> str:
        return "__".join(key.path)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.6f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cycle_row(spec: CompetitionSpec, scope: Scope, cycle_at: datetime, model_id: str) -> dict:
    """The fields every prediction row of a cycle has, whatever happened."""
    return {
        "competition": spec.slug,
        "model_id": model_id,
        "scope_key": scope.key,
        "cycle_at": cycle_at,
        "resolvable_at": cycle_at + timedelta(seconds=scope.resolve_horizon_seconds),
        "performed_at": cycle_at,
        "exec_time_ms": None,
        "scope": scope.as_dict(),
        "inference_output": None,
        "status_reason": None,
        "meta": {},
    }


def _prediction_row(
    spec: CompetitionSpec, rules: CompetitionRules, scope: Scope, cycle_at: datetime, result: ModelCallResult
) -> dict:
    """Map a runner result to a prediction row: SUCCESS + valid output -> PENDING; the model
    raised, timed out, crashed or answered garbage -> FAILED with the reason; no answer -> ABSENT."""
    row = {**_cycle_row(spec, scope, cycle_at, result.model_id), "exec_time_ms": result.exec_time_ms}
    if result.status is CallStatus.SUCCESS:
        try:
            row["inference_output"] = rules.validate_output(scope, result.output)
            row["status"] = "PENDING"
        except Exception as error:  # the competition's validator names what is wrong
            row["status"] = "FAILED"
            row["status_reason"] = f"invalid output: {error}"[:1000]
            row["meta"] = {"raw_output": repr(result.output)[:2000]}
    elif result.status is CallStatus.ABSENT:
        row["status"] = "ABSENT"
        row["status_reason"] = result.detail or "no answer"
    else:
        row["status"] = "FAILED"
        prefix = "timeout" if result.status is CallStatus.TIMEOUT else "error"
        row["status_reason"] = f"{prefix}: {result.detail or ''}"[:1000]
    return row


def build_chain_assets(
    spec: CompetitionSpec, partitions: CompetitionPartitions, keys: ChainKeys
) -> list[dg.AssetsDefinition]:
    slug = spec.slug
    group = slug
    granularity_seconds = 60
    backfill_by_day = dg.BackfillPolicy.multi_run(max_partitions_per_run=24)

    @dg.asset(
        key=keys.feed_records,
        group_name=group,
        partitions_def=partitions.hourly,
        backfill_policy=backfill_by_day,
        description="Closed 1-minute candles of the competition's subjects, from its feed resource.",
        kinds={"postgres"},
        check_specs=[dg.AssetCheckSpec(checks.FEED_COMPLETE, asset=keys.feed_records)],
    )
    def feed_records(
        context: dg.AssetExecutionContext, config: WindowRunConfig, database: CrunchDatabase, feed: FeedResource
    ) -> dg.MaterializeResult:
        window = context.partition_time_window
        as_of = resolve_as_of(config, window, wait_up_to_seconds=spec.cycle_lead_seconds + 5)
        live = config.as_of is not None
        step = timedelta(seconds=granularity_seconds)
        # A window holds the candles that *close* inside it: the price observed at the window's
        # first instant (a cycle's entry price) belongs to the window.
        window_open_start, window_open_end = window.start - step, window.end - step
        written = fetched = pages = 0
        skipped: dict[str, int] = defaultdict(int)
        watermarks, errors = {}, {}
        live_deadline = time.monotonic() + spec.live_feed_wait_seconds
        for subject in spec.subjects:
            with database.engine.connect() as connection:
                stored_until = q.watermark(connection, feed.source_name(), subject, granularity_seconds)
            # Where the history a cycle needs is not stored yet (the first window, or a live
            # start after a pause), fetch it too, so a live input equals a replay's.
            fetch_start = window_open_start
            if stored_until is None or stored_until < window_open_start - step:
                fetch_start = window_open_start - timedelta(seconds=spec.history_seconds)
            try:  # no transaction is held open across the network call
                if live:
                    remaining_seconds = live_deadline - time.monotonic()
                    result = call_with_deadline(
                        lambda: feed.fetch_candles(subject, fetch_start, window_open_end, as_of=as_of),
                        remaining_seconds,
                    )
                else:
                    result = feed.fetch_candles(subject, fetch_start, window_open_end, as_of=as_of)
            except Exception as error:
                if not live:
                    raise  # a backfill that cannot fetch fails visibly, to be retried
                # Live: the feed's own time bound has passed; the cycle goes on with what is stored.
                errors[subject] = f"{type(error).__name__}: {error}"[:500]
                context.log.error(f"{subject}: feed fetch failed, continuing with stored data: {errors[subject]}")
                continue
            fetched += len(result.candles)
            pages += result.pages_fetched
            for reason, count in result.skipped_by_reason().items():
                skipped[reason] += count
                context.log.warning(f"{subject}: skipped {count} feed row(s): {reason}")
            with database.engine.begin() as connection:
                written += q.upsert_candles(connection, feed.source_name(), result.candles)
                if result.candles:
                    last = max(c.ts_event for c in result.candles)
                    q.advance_watermark(connection, feed.source_name(), subject, granularity_seconds, last)
                    watermarks[subject] = last.isoformat()
        with database.engine.connect() as connection:
            gap_check = checks.check_feed_complete(
                connection, spec, feed.source_name(), keys.feed_records, granularity_seconds,
                window_open_start, min(window_open_end, as_of - step + timedelta(microseconds=1)),
            )
        return dg.MaterializeResult(
            metadata={
                "as_of": as_of.isoformat(),
                "source": feed.source_name(),
                "records_fetched": fetched,
                "records_written": written,
                "pages_fetched": pages,
                "rows_skipped": sum(skipped.values()),
                "rows_skipped_by_reason": dict(skipped),
                "watermark": watermarks,
                "feed_errors": errors,
            },
            check_results=[gap_check],
        )

    @dg.asset(
        key=keys.predictions,
        group_name=group,
        partitions_def=partitions.hourly,
        backfill_policy=backfill_by_day,
        deps=[
            dg.AssetDep(
                keys.feed_records,
                # A cycle's input is the history before it: this window and the one before.
                partition_mapping=dg.TimeWindowPartitionMapping(
                    start_offset=-1, end_offset=0, allow_nonexistent_upstream_partitions=True
                ),
            )
        ],
        description="Each cycle's model input (inputs table) and one prediction per model per cycle.",
        kinds={"postgres"},
        check_specs=[dg.AssetCheckSpec(checks.EVERY_CYCLE_STORED, asset=keys.predictions, blocking=True)],
    )
    def predictions(
        context: dg.AssetExecutionContext,
        config: WindowRunConfig,
        database: CrunchDatabase,
        feed: FeedResource,
        rules: CompetitionRules,
        model_runner: ModelRunnerResource,
    ) -> dg.MaterializeResult:
        window = context.partition_time_window
        as_of = resolve_as_of(config, window, wait_up_to_seconds=spec.cycle_lead_seconds + 5)
        engine = database.engine
        # cycles up to and including as_of, but never the next window's first one
        due_until = min(as_of + timedelta(microseconds=1), window.end)
        due = spec.cycle_times(window.start, due_until)
        with engine.connect() as connection:
            done = q.stored_cycles(connection, slug, window.start, window.end)
        todo = [(cycle_at, scope) for cycle_at, scope in due if (cycle_at, scope.key) not in done]
        made: dict[str, int] = defaultdict(int)
        quarantines: list[str] = []
        if todo:
            history = timedelta(seconds=spec.history_seconds)
            with engine.connect() as connection:
                candles = q.load_candles(
                    connection, feed.source_name(), spec.subjects, granularity_seconds,
                    todo[0][0] - history - timedelta(seconds=granularity_seconds), todo[-1][0],
                )
            policy = QuarantinePolicy(spec.quarantine_after_failures, spec.quarantine_cooldown_seconds)
            with model_runner.open_session(rules.model_interface()) as session:
                session_models = session.models()
                with engine.begin() as connection:  # first/last seen as cycle times, so a replay agrees
                    q.upsert_models(connection, slug, session_models, first_seen=todo[0][0], last_seen=todo[-1][0])
                # The session's models are the runner's live registry (an announced model that is
                # stopped or not connected comes back ABSENT); a runner that cannot reach the
                # registry fails the run instead of blaming every model.
                expected = sorted(m.model_id for m in session_models)
                with engine.connect() as connection:
                    health = load_health(connection, slug, expected, todo[0][0], spec.quarantine_after_failures + 1)
                pending_rows: list[tuple[dict, list[dict]]] = []
                events: list[dict] = []
                for cycle_at, scope in todo:
                    model_input = rules.build_inference_input(
                        scope, cycle_at, _history(candles.get(scope.subject, []), cycle_at, history)
                    )
                    quarantined = frozenset(m for m in expected if health[m].is_quarantined(cycle_at))
                    results = session.run_cycle(
                        rules.build_model_calls(scope, model_input), model_runner.call_timeout_seconds,
                        skip_model_ids=quarantined,
                    )
                    rows = []
                    for model_id in expected:
                        if model_id in quarantined:
                            row = _quarantined_row(spec, scope, cycle_at, model_id, health[model_id].quarantined_until)
                        else:
                            result = results.get(model_id) or ModelCallResult(
                                model_id, CallStatus.ABSENT, detail="no answer from the model runner"
                            )
                            row = _prediction_row(spec, rules, scope, cycle_at, result)
                            if result.status is not CallStatus.ABSENT:
                                until = policy.record(health[model_id], cycle_at, failed=row["status"] == "FAILED")
                                if until is not None:
                                    events.append(_quarantine_event(slug, model_id, cycle_at, until, policy))
                                    quarantines.append(f"{model_id} at {cycle_at.isoformat()} until {until.isoformat()}")
                                    context.log.warning(f"{model_id} quarantined until {until.isoformat()}")
                        made[row["status"]] += 1
                        rows.append(row)
                    input_row = {
                        "competition": slug,
                        "scope_key": scope.key,
                        "cycle_at": cycle_at,
                        "status": "RECEIVED",
                        "received_at": cycle_at,
                        "resolvable_at": cycle_at + timedelta(seconds=scope.resolve_horizon_seconds),
                        "raw_data": model_input,
                        "scope": scope.as_dict(),
                    }
                    pending_rows.append((input_row, rows))
                    if len(pending_rows) >= CYCLES_PER_WRITE:
                        _write_cycles(engine, pending_rows, events)
                        pending_rows, events = [], []
                _write_cycles(engine, pending_rows, events)
        with engine.connect() as connection:
            totals = q.prediction_status_counts(connection, slug, window.start, window.end)
            cycle_check = checks.check_every_cycle_stored(connection, spec, keys.predictions, window.start, due_until)
        context.log.info(f"{len(todo)} cycle(s) run up to {as_of.isoformat()}: {dict(made)}")
        return dg.MaterializeResult(
            metadata={
                "as_of": as_of.isoformat(),
                "cycles_run": len(todo),
                "cycles_already_stored": len(due) - len(todo),
                "predictions_made": made.get("PENDING", 0),
                "predictions_failed": made.get("FAILED", 0),
                "predictions_absent": made.get("ABSENT", 0),
                "quarantines_started": quarantines,
                "window_status_counts": totals,
            },
            check_results=[cycle_check],
        )

    @dg.asset(
        key=keys.scores,
        group_name=group,
        partitions_def=partitions.hourly,
        backfill_policy=backfill_by_day,
        deps=[
            dg.AssetDep(keys.predictions),
            dg.AssetDep(
                keys.feed_records,
                # Ground truth of this window's cycles needs the feed up to the window's end plus
                # the horizon (<= 1 hour): this window and the next.
                partition_mapping=dg.TimeWindowPartitionMapping(
                    start_offset=0, end_offset=1, allow_nonexistent_upstream_partitions=True
                ),
            ),
        ],
        description="One score per resolved prediction; FAILED/ABSENT predictions score the failure value.",
        kinds={"postgres"},
        check_specs=[dg.AssetCheckSpec(checks.SCORES_FINITE, asset=keys.scores, blocking=True)],
    )
    def scores(
        context: dg.AssetExecutionContext,
        config: WindowRunConfig,
        database: CrunchDatabase,
        feed: FeedResource,
        rules: CompetitionRules,
    ) -> dg.MaterializeResult:
        window = context.partition_time_window
        settle = timedelta(seconds=spec.settle_delay_seconds)
        horizon = timedelta(seconds=spec.max_horizon_seconds)
        # Live: the settlement sensor passes how far prices are stored; backfill: the window's end
        # plus the horizon. Never later than now minus the settle delay.
        limit = datetime.fromisoformat(config.as_of) if config.as_of else window.end + horizon
        now = datetime.now(timezone.utc)
        void_before = now - timedelta(seconds=spec.void_after_seconds)
        engine = database.engine
        p = t.predictions
        with engine.connect() as connection:
            # Settlement guard: never score past what the feed has stored (nor past now - settle).
            coverage = q.feed_coverage(connection, feed.source_name(), spec.subjects, granularity_seconds)
            # Nothing stored yet: nothing is settled (spec.start precedes every resolution).
            settled_until = min(limit, now - settle, coverage) if coverage else spec.start
            unscored = connection.execute(
                sa.select(p.c.id, p.c.model_id, p.c.scope_key, p.c.cycle_at, p.c.resolvable_at, p.c.status,
                          p.c.status_reason, p.c.inference_output, p.c.scope, p.c.input_id)
                .outerjoin(t.scores, t.scores.c.prediction_id == p.c.id)
                .where(
                    p.c.competition == slug,
                    p.c.cycle_at >= window.start,
                    p.c.cycle_at < window.end,
                    p.c.resolvable_at <= max(settled_until, void_before),
                    t.scores.c.id.is_(None),
                    p.c.status.in_(["PENDING", "FAILED", "ABSENT"]),
                )
                .order_by(p.c.cycle_at, p.c.model_id)
            ).fetchall()
            series = {}
            if unscored:
                latest = max(row.resolvable_at for row in unscored)
                earliest = min(row.cycle_at for row in unscored) - timedelta(seconds=spec.max_price_staleness_seconds)
                for subject in spec.subjects:
                    series[subject] = q.load_price_series(
                        connection, feed.source_name(), subject, granularity_seconds, earliest, latest
                    )
        scopes = {scope.key: scope for scope in spec.scopes}
        truths: dict[int, dict | None] = {}
        score_rows, resolved_inputs, voided_inputs = [], {}, {}
        waiting = 0
        for row in unscored:
            scope = scopes.get(row.scope_key) or Scope(**row.scope)
            if row.input_id not in truths:
                truths[row.input_id] = (
                    rules.resolve_ground_truth(
                        scope, row.cycle_at, row.resolvable_at, series[scope.subject], spec.max_price_staleness_seconds
                    )
                    if row.resolvable_at <= settled_until
                    else None
                )
            truth = truths[row.input_id]
            if truth is None:
                if row.resolvable_at <= void_before:
                    voided_inputs[row.input_id] = (
                        f"ground truth missing {spec.void_after_seconds} s after resolution: no stored price within "
                        f"{spec.max_price_staleness_seconds} s of {row.cycle_at.isoformat()} or {row.resolvable_at.isoformat()}"
                    )
                else:
                    waiting += 1  # stays PENDING until the feed has the prices
                continue
            resolved_inputs[row.input_id] = truth
            score_rows.append(_score_row(slug, rules, scope, row, truth))
        with engine.begin() as connection:
            upsert(connection, t.scores, score_rows, ["prediction_id"])
            scored_ids = [r["prediction_id"] for r in score_rows]
            if scored_ids:
                connection.execute(
                    sa.update(p).where(p.c.id.in_(scored_ids), p.c.status == "PENDING").values(status="SCORED")
                )
            if resolved_inputs:  # one executemany, not a statement per input
                connection.execute(
                    sa.update(t.inputs)
                    .where(t.inputs.c.id == sa.bindparam("input_id"))
                    .values(status="RESOLVED", actuals=sa.bindparam("truth")),
                    [{"input_id": input_id, "truth": truth} for input_id, truth in resolved_inputs.items()],
                )
            # A voided cycle is neither scored nor penalised, for every model in it.
            for input_id, reason in voided_inputs.items():
                connection.execute(
                    sa.update(p).where(p.c.input_id == input_id, p.c.status.in_(["PENDING", "FAILED", "ABSENT"]))
                    .values(status="VOIDED", status_reason=reason)
                )
                connection.execute(
                    sa.update(t.inputs).where(t.inputs.c.id == input_id)
                    .values(status="VOIDED", meta=sa.func.jsonb_build_object("void_reason", reason))
                )
            still_pending = connection.execute(
                sa.select(sa.func.count()).select_from(p).where(
                    p.c.competition == slug, p.c.cycle_at >= window.start, p.c.cycle_at < window.end,
                    p.c.status == "PENDING",
                )
            ).scalar_one()
            score_check = checks.check_scores_finite(connection, spec, keys.scores, window.start, window.end)
        successes = sum(1 for r in score_rows if r["success"])
        return dg.MaterializeResult(
            metadata={
                "settled_until": settled_until.isoformat(),
                "scored": successes,
                "penalised": len(score_rows) - successes,
                "waiting_for_ground_truth": waiting,
                "cycles_voided": len(voided_inputs),
                "void_reasons": sorted(set(voided_inputs.values()))[:5],
                "pending": int(still_pending),
            },
            check_results=[score_check],
        )

    @dg.asset(
        key=keys.snapshots,
        group_name=group,
        partitions_def=partitions.daily,
        deps=[keys.scores],
        description="Per model and hour: prediction count, sum and summary of score values.",
        kinds={"postgres"},
    )
    def snapshots(
        context: dg.AssetExecutionContext, config: WindowRunConfig, database: CrunchDatabase, rules: CompetitionRules
    ) -> dg.MaterializeResult:
        window = context.partition_time_window
        as_of = resolve_as_of(config, window)
        s = t.scores
        with database.engine.connect() as connection:
            rows = connection.execute(
                sa.select(s.c.model_id, s.c.cycle_at, s.c.value, s.c.success, s.c.result).where(
                    s.c.competition == slug, s.c.cycle_at >= window.start, s.c.cycle_at < as_of
                )
            ).fetchall()
        groups: dict[tuple[str, datetime], list] = defaultdict(list)
        for row in rows:
            groups[(row.model_id, row.cycle_at.replace(minute=0, second=0, microsecond=0))].append(row)
        snapshot_rows = []
        for (model_id, hour), members in sorted(groups.items()):
            value_sum = math.fsum(m.value for m in members)
            summary = rules.summarize_scores([dict(m.result) for m in members])
            summary.update(
                {
                    "value": value_sum / len(members),
                    "succeeded": sum(1 for m in members if m.success),
                    "failed": sum(1 for m in members if not m.success),
                }
            )
            snapshot_rows.append(
                {
                    "competition": slug,
                    "model_id": model_id,
                    "period_start": hour,
                    "period_end": hour + timedelta(hours=1),
                    "prediction_count": len(members),
                    "value_sum": value_sum,
                    "result_summary": summary,
                }
            )
        with database.engine.begin() as connection:
            written, _ = upsert(
                connection, t.snapshots, snapshot_rows,
                ["competition", "model_id", "period_start", "period_end"],
                update_columns=["prediction_count", "value_sum", "result_summary"],
            )
        return dg.MaterializeResult(
            metadata={"as_of": as_of.isoformat(), "snapshots": len(snapshot_rows), "snapshots_changed": written,
                      "scores_summarised": len(rows)}
        )

    @dg.asset(
        key=keys.leaderboard,
        group_name=group,
        partitions_def=partitions.daily,
        deps=[
            dg.AssetDep(
                keys.snapshots,
                partition_mapping=dg.TimeWindowPartitionMapping(
                    start_offset=-(max(w.seconds for w in spec.leaderboard_windows) // 86400), end_offset=0,
                    allow_nonexistent_upstream_partitions=True,
                ),
            )
        ],
        description="The leaderboard as of the window's end (or the run's as_of): time-window means, ranked.",
        kinds={"postgres"},
        check_specs=[dg.AssetCheckSpec(checks.LEADERBOARD_RANKED, asset=keys.leaderboard)],
    )
    def leaderboard(
        context: dg.AssetExecutionContext, config: WindowRunConfig, database: CrunchDatabase
    ) -> dg.MaterializeResult:
        window = context.partition_time_window
        as_of = resolve_as_of(config, window)
        longest = max(w.seconds for w in spec.leaderboard_windows)
        with database.engine.connect() as connection:
            rows = q.load_snapshot_rows(connection, slug, _ceil_hour(as_of) - timedelta(seconds=longest), as_of)
            names = q.model_names(connection, slug)
            joined = q.first_snapshot_hours(connection, slug)
        entries = leaderboard_entries(spec, rows, as_of, names, joined)
        with database.engine.begin() as connection:
            upsert(connection, t.leaderboards, [{"competition": slug, "as_of": as_of, "entries": entries}],
                   ["competition", "as_of"], update_columns=["entries"])
        window_names = [w.name for w in spec.leaderboard_windows]
        table = markdown_table(
            ["rank", "model", *window_names, "predictions (longest window)"],
            [[e["rank"], e["model_id"], *[e[n] for n in window_names], e["prediction_count"]] for e in entries],
        )
        return dg.MaterializeResult(
            metadata={"as_of": as_of.isoformat(), "models": len(entries), "leaderboard": dg.MetadataValue.md(table)},
            check_results=[checks.check_leaderboard_ranked(spec, keys.leaderboard, entries)],
        )

    @dg.asset(
        key=keys.emission_checkpoints,
        group_name=group,
        partitions_def=partitions.checkpoint,
        deps=[keys.snapshots],
        description="The period's reward split in frac64 (1,000,000,000 = 100 %), stored PENDING for payment.",
        kinds={"postgres"},
        check_specs=[dg.AssetCheckSpec(checks.REWARDS_EXACT, asset=keys.emission_checkpoints, blocking=True)],
    )
    def emission_checkpoints(
        context: dg.AssetExecutionContext, database: CrunchDatabase, rules: CompetitionRules
    ) -> dg.MaterializeResult:
        window = context.partition_time_window
        with database.engine.connect() as connection:
            rows = q.load_snapshot_rows(connection, slug, window.start, window.end)
        if not rows:
            context.log.info("no snapshots in the period: no checkpoint")
            return dg.MaterializeResult(
                metadata={"checkpoint": "none: no snapshots in the period"},
                check_results=[checks.check_rewards(keys.emission_checkpoints, None)],
            )
        checkpoint = build_checkpoint(spec, rules, rows)
        c = t.checkpoints
        with database.engine.begin() as connection:
            existing = connection.execute(
                sa.select(c.c.status, c.c.entries).where(
                    c.c.competition == slug, c.c.period_start == window.start, c.c.period_end == window.end
                )
            ).first()
            if existing is not None and existing.status != "PENDING":
                # Paid money does not move: a recomputation that disagrees is reported, not written.
                if existing.entries != checkpoint:
                    context.log.warning(f"checkpoint already {existing.status}; recomputed rewards differ and were not written")
                checkpoint = existing.entries
            else:
                upsert(
                    connection, c,
                    [{"competition": slug, "period_start": window.start, "period_end": window.end,
                      "status": "PENDING", "entries": checkpoint}],
                    ["competition", "period_start", "period_end"], update_columns=["entries"],
                )
        table = markdown_table(
            ["rank", "model", "score", "predictions", "reward (frac64)", "reward %"],
            [[r["rank"], r["model_id"], r["score"], r["prediction_count"], r["reward_pct"], r["reward_pct"] / 1e7]
             for r in checkpoint["ranking"]],
        )
        return dg.MaterializeResult(
            metadata={
                "period": f"{window.start.isoformat()} .. {window.end.isoformat()}",
                "models": len(checkpoint["ranking"]),
                "reward_sum": sum(r["reward_pct"] for r in checkpoint["ranking"]),
                "reward_split": dg.MetadataValue.md(table),
            },
            check_results=[checks.check_rewards(keys.emission_checkpoints, checkpoint)],
        )

    return [feed_records, predictions, scores, snapshots, leaderboard, emission_checkpoints]


class FeedTooSlow(TimeoutError):
    pass


def call_with_deadline(fn, seconds: float):
    """fn() if it returns within `seconds`; else FeedTooSlow. The call goes on in a daemon thread
    (bounded by the feed's own time limits) so the cycle does not wait for it."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error

    worker = threading.Thread(target=target, daemon=True, name="feed-fetch")
    worker.start()
    worker.join(max(0.0, seconds))
    if worker.is_alive():
        raise FeedTooSlow(f"the feed did not answer within {seconds:.1f} s; the cycle goes on with stored data")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _ceil_hour(instant: datetime) -> datetime:
    floor = instant.replace(minute=0, second=0, microsecond=0)
    return floor if floor == instant else floor + timedelta(hours=1)


def _history(candles: list[Candle], cycle_at: datetime, history: timedelta) -> list[Candle]:
    """Candles (ascending) that closed in (cycle_at - history, cycle_at]: nothing after the cycle
    time. Bisected: a day's backfill asks this 1,440 times of the same list."""
    step = timedelta(seconds=candles[0].granularity_seconds) if candles else timedelta(0)
    lo = bisect.bisect_right(candles, cycle_at - history - step, key=lambda c: c.ts_event)
    hi = bisect.bisect_right(candles, cycle_at - step, key=lambda c: c.ts_event)
    return candles[lo:hi]


def _quarantined_row(spec: CompetitionSpec, scope: Scope, cycle_at: datetime, model_id: str, until: datetime) -> dict:
    """Not called this cycle; FAILED, so the quarantine counts against the model."""
    return {
        **_cycle_row(spec, scope, cycle_at, model_id),
        "status": "FAILED",
        "status_reason": f"quarantined: not called until {until.isoformat()}",
        "meta": {QUARANTINE_META_KEY: until.isoformat()},
    }


def _quarantine_event(slug: str, model_id: str, cycle_at: datetime, until: datetime, policy: QuarantinePolicy) -> dict:
    return {
        "competition": slug, "model_id": model_id, "event": "QUARANTINED", "at": cycle_at,
        "reason": f"{policy.failures_before_quarantine} consecutive failed cycles",
        "meta": {QUARANTINE_META_KEY: until.isoformat(), "cooldown_seconds": int(policy.cooldown.total_seconds())},
    }


def _write_cycles(engine: sa.Engine, cycles: list[tuple[dict, list[dict]]], events: list[dict]) -> None:
    """Inputs, their predictions and the model events they caused in one transaction: a cycle is
    stored whole or not at all."""
    if not cycles:
        return
    with engine.begin() as connection:
        upsert(connection, t.model_events, events, ["competition", "model_id", "event", "at"])
        _, id_rows = upsert(
            connection, t.inputs, [input_row for input_row, _ in cycles],
            ["competition", "scope_key", "cycle_at"],
            returning=[t.inputs.c.id, t.inputs.c.scope_key, t.inputs.c.cycle_at],
        )
        ids = {(row.scope_key, row.cycle_at): row.id for row in id_rows}
        prediction_rows = []
        for input_row, rows in cycles:
            input_id = ids.get((input_row["scope_key"], input_row["cycle_at"]))
            if input_id is None:
                continue  # stored concurrently by another run: theirs stands
            prediction_rows += [{**row, "input_id": input_id} for row in rows]
        upsert(connection, t.predictions, prediction_rows, ["competition", "model_id", "scope_key", "cycle_at"])


def _score_row(slug: str, rules: CompetitionRules, scope: Scope, prediction: Any, truth: dict) -> dict:
    row = {
        "competition": slug,
        "prediction_id": prediction.id,
        "model_id": prediction.model_id,
        "scope_key": prediction.scope_key,
        "cycle_at": prediction.cycle_at,
    }
    if prediction.status != "PENDING":
        return {**row, "value": rules.failure_score, "success": False,
                "failed_reason": f"{prediction.status}: {prediction.status_reason}", "result": {}}
    try:
        result = dict(rules.score_prediction(scope, prediction.inference_output, truth))
    except Exception as error:  # one bad prediction never aborts the window (nor is retried forever)
        result = {"value": None, "success": False, "failed_reason": f"scoring error: {type(error).__name__}: {error}"}
    value = result.get("value")
    usable = bool(result.get("success")) and isinstance(value, (int, float)) and math.isfinite(value)
    return {
        **row,
        "value": float(value) if usable else rules.failure_score,
        "success": usable,
        "failed_reason": None if usable else (result.get("failed_reason") or f"unusable score value {value!r}"),
        "result": {k: v for k, v in result.items() if _json_safe(v)},
    }


def _json_safe(value: Any) -> bool:
    return not (isinstance(value, float) and not math.isfinite(value))


def leaderboard_entries(
    spec: CompetitionSpec, rows: list, as_of: datetime, names: dict[str, str], joined: dict[str, datetime]
) -> list[dict]:
    """Per model, each window's count-weighted mean over hourly snapshots starting in
    [ceil_hour(as_of) - window, as_of), ranked by the spec's ranking key. A model is compared from
    its first scored hour on (`joined`); windows it only partly covers are flagged incomplete."""
    per_window = {}
    for window in spec.leaderboard_windows:
        per_window[window.name] = window_scores(rows, _ceil_hour(as_of), window.seconds, joined)
    model_ids = sorted({model_id for scores in per_window.values() for model_id in scores})
    ranking_values = {m: per_window[spec.ranking_key].get(m, {}).get("value") for m in model_ids}
    ranked = rank_models(ranking_values, descending=spec.ranking_descending)
    longest = max(spec.leaderboard_windows, key=lambda w: w.seconds).name
    entries = []
    for rank, model_id in enumerate(ranked, start=1):
        entry = {"rank": rank, "model_id": model_id, "model_name": names.get(model_id, model_id)}
        for window in spec.leaderboard_windows:
            details = per_window[window.name].get(model_id)
            entry[window.name] = details["value"] if details else None
            entry[f"{window.name}_complete"] = bool(details and details["complete"])
            entry[f"{window.name}_coverage"] = details["coverage"] if details else 0.0
        entry["prediction_count"] = per_window[longest].get(model_id, {}).get("count", 0)
        entries.append(entry)
    return entries


def build_checkpoint(spec: CompetitionSpec, rules: CompetitionRules, rows: list) -> dict:
    """Rank the period's count-weighted means and attach the emission."""
    means = weighted_means(rows)
    ranked = rank_models({m: mean for m, (mean, _) in means.items()}, descending=spec.ranking_descending)
    rewards = [int(r) for r in rules.build_emission(ranked)]
    if len(rewards) != len(ranked) or sum(rewards) != FRAC64_ONE or min(rewards) < 0:
        raise ValueError(f"emission must give {len(ranked)} non-negative rewards summing to {FRAC64_ONE}; got {rewards}")
    payload = emission_payload(
        ranked, rewards, spec.crunch_pubkey or spec.slug, spec.compute_provider_pubkey, spec.data_provider_pubkey
    )
    payload["ranking"] = [
        {"rank": rank, "cruncher_index": rank - 1, "model_id": model_id, "score": means[model_id][0],
         "prediction_count": means[model_id][1], "reward_pct": reward}
        for rank, (model_id, reward) in enumerate(zip(ranked, rewards), start=1)
    ]
    return payload
