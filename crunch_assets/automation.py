"""Jobs, sensors and schedules that run a competition live.

- cycle sensor: each due cycle -> one run of feed_records + predictions for its hour, as of the
  cycle time (run key per cycle: a cycle never runs twice);
- settlement sensor: predictions whose horizon has passed and whose prices are stored -> scores;
- rollup sensor: new scores -> snapshots + leaderboard of their day;
- checkpoint sensor: a closed, fully settled checkpoint period -> its emission checkpoint;
- daily rollup schedule: yesterday's snapshots and leaderboard as of midnight (the final word).
Each sensor evaluation is a few indexed queries: well inside Dagster's 60 s sensor timeout.
"""


from dataclasses import dataclass
from typing import Any
from datetime import datetime, timedelta, timezone

import dagster as dg
import sqlalchemy as sa

from crunch_assets import store_queries as q
from crunch_assets.assets import ChainKeys, as_of_run_config
from crunch_assets.partitions import CompetitionPartitions
from crunch_assets.spec import CompetitionSpec
from resources.feeds.base import FeedResource
from resources.model_runners.base import ModelInfo, ModelRunnerResource
from resources.store import schema as t
from resources.store.database import CrunchDatabase

CHECKPOINTS_PER_TICK = 8


@dataclass(frozen=True)
class CompetitionJobs:
    feed: Any
    cycle: Any
    scores: Any
    rollup: Any
    checkpoint: Any

    def all(self) -> list:
        return [self.feed, self.cycle, self.scores, self.rollup, self.checkpoint]


def build_jobs(spec: CompetitionSpec, partitions: CompetitionPartitions, keys: ChainKeys) -> CompetitionJobs:
    def job(name: str, selection: list[dg.AssetKey], partitions_def, description: str):
        return dg.define_asset_job(
            f"{spec.slug}__{name}",
            selection=dg.AssetSelection.assets(*selection),
            partitions_def=partitions_def,
            executor_def=dg.in_process_executor,  # small steps: one process per run is enough
            description=description,
        )

    return CompetitionJobs(
        feed=job("feed_job", [keys.feed_records], partitions.hourly, "Ingest the feed of the current hour."),
        cycle=job("cycle_job", [keys.feed_records, keys.predictions], partitions.hourly,
                  "Ingest the feed and run one prediction cycle."),
        scores=job("score_job", [keys.scores], partitions.hourly, "Score the settled predictions of an hour."),
        rollup=job("rollup_job", [keys.snapshots, keys.leaderboard], partitions.daily,
                   "Refresh a day's snapshots and the leaderboard."),
        checkpoint=job("checkpoint_job", [keys.emission_checkpoints], partitions.checkpoint,
                       "Build a period's emission checkpoint."),
    )


def _floor(instant: datetime, seconds: int) -> datetime:
    return datetime.fromtimestamp(int(instant.timestamp()) // seconds * seconds, tz=timezone.utc)


def build_automation(
    spec: CompetitionSpec,
    partitions: CompetitionPartitions,
    keys: ChainKeys,
    jobs: CompetitionJobs,
    running: bool,
) -> tuple[list[dg.SensorDefinition], list[dg.ScheduleDefinition]]:
    slug = spec.slug
    status = dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED
    cycle_ops = [ChainKeys.op_name(keys.feed_records), ChainKeys.op_name(keys.predictions)]
    settle = timedelta(seconds=spec.settle_delay_seconds)

    @dg.sensor(
        name=f"{slug}__cycle_sensor", job=jobs.cycle, default_status=status,
        minimum_interval_seconds=spec.cycle_sensor_interval_seconds,
        description="Launches each due prediction cycle (feed + predictions) once.",
    )
    def cycle_sensor(context: dg.SensorEvaluationContext):
        """One run per hour window with due cycles, as of the latest (launched up to
        cycle_lead_seconds early; the run waits for the cycle time): the predictions asset runs
        every cycle of the window up to as_of that is not stored yet, so a catch-up after a pause
        is one run, not one per missed cycle. A first start begins with the current cycle; a
        restart catches up at most max_catchup_seconds."""
        now = datetime.now(timezone.utc)
        if context.cursor:
            earliest = max(
                datetime.fromisoformat(context.cursor) + timedelta(microseconds=1),
                now - timedelta(seconds=spec.max_catchup_seconds),
            )
        else:
            earliest = now - timedelta(seconds=min(scope.prediction_interval_seconds for scope in spec.scopes))
        earliest = max(earliest, spec.start)
        horizon = now + timedelta(seconds=spec.cycle_lead_seconds, microseconds=1)  # launch slightly early
        # ...but not into the next hour: its partition exists only once the hour has begun.
        horizon = min(horizon, now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1))
        due_times = sorted({cycle_at for cycle_at, _ in spec.cycle_times(earliest, horizon)})
        if not due_times:
            return dg.SkipReason(f"no cycle due since {earliest.isoformat()}")
        latest_by_hour: dict[str, datetime] = {}
        for cycle_at in due_times:
            latest_by_hour[partitions.hour_key(cycle_at)] = cycle_at
        for hour_key, cycle_at in latest_by_hour.items():
            yield dg.RunRequest(
                run_key=f"{slug}:cycle:{cycle_at.isoformat()}",
                partition_key=hour_key,
                run_config=as_of_run_config(cycle_ops, cycle_at),
                tags={"crunch/cycle_at": cycle_at.isoformat(), "crunch/cycles_due": str(len(due_times))},
            )
        context.update_cursor(due_times[-1].isoformat())

    @dg.sensor(
        name=f"{slug}__settlement_sensor", job=jobs.scores, default_status=status,
        minimum_interval_seconds=spec.settlement_sensor_interval_seconds,
        description="Scores predictions once their horizon has passed and the feed covers it.",
    )
    def settlement_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase, feed: FeedResource):
        p = t.predictions
        with database.engine.connect() as connection:
            coverage = q.feed_coverage(connection, feed.source_name(), spec.subjects, feed.granularity_seconds)
            if coverage is None:
                return dg.SkipReason("the feed has no stored candles yet")
            settled_until = _floor(min(coverage, datetime.now(timezone.utc) - settle), 60)
            since = datetime.fromisoformat(context.cursor) if context.cursor else spec.start
            hours = connection.execute(
                sa.select(sa.func.date_trunc("hour", p.c.cycle_at).label("hour"))
                .outerjoin(t.scores, t.scores.c.prediction_id == p.c.id)
                .where(
                    p.c.competition == slug,
                    t.scores.c.id.is_(None),
                    p.c.resolvable_at > since,
                    p.c.resolvable_at <= settled_until,
                )
                .group_by("hour")
            ).scalars().all()
            # Predictions still pending past the void deadline: one run per hour voids them (or
            # scores them, if their prices arrived late).
            void_before = datetime.now(timezone.utc) - timedelta(seconds=spec.void_after_seconds)
            overdue = connection.execute(
                sa.select(sa.func.date_trunc("hour", p.c.cycle_at).label("hour"))
                .where(p.c.competition == slug, p.c.status == "PENDING", p.c.resolvable_at <= void_before)
                .group_by("hour")
            ).scalars().all()
        if not hours and not overdue:
            return dg.SkipReason(f"nothing newly settled up to {settled_until.isoformat()}")
        for hour in sorted(hours):
            yield dg.RunRequest(
                run_key=f"{slug}:scores:{hour.isoformat()}:{settled_until.isoformat()}",
                partition_key=partitions.hour_key(hour),
                run_config=as_of_run_config([ChainKeys.op_name(keys.scores)], settled_until),
            )
        for hour in sorted(overdue):
            yield dg.RunRequest(
                run_key=f"{slug}:void:{hour.isoformat()}",
                partition_key=partitions.hour_key(hour),
                run_config=as_of_run_config([ChainKeys.op_name(keys.scores)], _floor(datetime.now(timezone.utc), 60)),
            )
        context.update_cursor(settled_until.isoformat())

    @dg.sensor(
        name=f"{slug}__rollup_sensor", job=jobs.rollup, default_status=status, minimum_interval_seconds=60,
        description="Refreshes snapshots and the leaderboard of the days that got new scores.",
    )
    def rollup_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase):
        s = t.scores
        last_id = int(context.cursor or 0)
        with database.engine.connect() as connection:
            row = connection.execute(
                sa.select(sa.func.max(s.c.id), sa.func.min(s.c.cycle_at), sa.func.max(s.c.cycle_at)).where(
                    s.c.competition == slug, s.c.id > last_id
                )
            ).one()
        newest_id, first_cycle, last_cycle = row
        if newest_id is None:
            return dg.SkipReason("no new scores")
        as_of = _floor(datetime.now(timezone.utc), 60)
        day = first_cycle.replace(hour=0, minute=0, second=0, microsecond=0)
        while day <= last_cycle:
            yield dg.RunRequest(
                run_key=f"{slug}:rollup:{day.date().isoformat()}:{newest_id}",
                partition_key=partitions.day_key(day),
                run_config=as_of_run_config(
                    [ChainKeys.op_name(keys.snapshots), ChainKeys.op_name(keys.leaderboard)],
                    min(as_of, day + timedelta(days=1)),
                ),
            )
            day += timedelta(days=1)
        context.update_cursor(str(newest_id))

    @dg.sensor(
        name=f"{slug}__checkpoint_sensor", job=jobs.checkpoint, default_status=status, minimum_interval_seconds=300,
        description="Builds the emission checkpoint of a closed period once every prediction in it is settled.",
    )
    def checkpoint_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase):
        """Periods are checkpointed in order, from where the last checkpoint ended: a period that
        takes long to settle delays the ones after it instead of being skipped."""
        now = datetime.now(timezone.utc)
        p, s, snap, c = t.predictions, t.scores, t.snapshots, t.checkpoints
        requests, waiting = [], []
        with database.engine.connect() as connection:
            last_end = connection.execute(
                sa.select(sa.func.max(c.c.period_end)).where(c.c.competition == slug)
            ).scalar()
            first_scored = connection.execute(
                sa.select(sa.func.min(s.c.cycle_at)).where(
                    s.c.competition == slug, s.c.cycle_at >= (last_end or spec.start)
                )
            ).scalar()
            if first_scored is None:
                return dg.SkipReason("no scores since the last checkpoint")
            candidates = [
                key for key in partitions.checkpoint.get_partition_keys(current_time=now)
                if partitions.checkpoint.time_window_for_partition_key(key).end > first_scored
            ][:CHECKPOINTS_PER_TICK]
            for key in candidates:
                window = partitions.checkpoint.time_window_for_partition_key(key)
                if now < window.end + timedelta(seconds=spec.max_horizon_seconds) + settle:
                    waiting.append(f"{key}: horizon not passed")
                    break

                def in_window(table):
                    return (table.c.competition == slug) & (table.c.cycle_at >= window.start) & (
                        table.c.cycle_at < window.end)

                pending = connection.execute(
                    sa.select(sa.func.count()).select_from(p).where(in_window(p), p.c.status == "PENDING")
                ).scalar_one()
                scored = connection.execute(sa.select(sa.func.count()).select_from(s).where(in_window(s))).scalar_one()
                summarised = connection.execute(
                    sa.select(sa.func.coalesce(sa.func.sum(snap.c.prediction_count), 0)).where(
                        snap.c.competition == slug, snap.c.period_start >= window.start, snap.c.period_start < window.end
                    )
                ).scalar_one()
                if pending or scored != summarised:
                    waiting.append(f"{key}: {pending} pending, {scored} scores vs {summarised} in snapshots")
                    break  # in order: later periods wait for this one
                if scored:
                    requests.append(dg.RunRequest(run_key=f"{slug}:checkpoint:{key}", partition_key=key))
        if not requests:
            return dg.SkipReason("; ".join(waiting) or "no closed period with scores to checkpoint")
        return requests

    @dg.sensor(
        name=f"{slug}__feed_sensor", job=jobs.feed, default_status=status,
        minimum_interval_seconds=spec.feed_poll_interval_seconds,
        description="Keeps the feed current between cycles (ground truth for sparse cycles).",
    )
    def feed_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase, feed: FeedResource):
        latest_closed = _floor(datetime.now(timezone.utc), feed.granularity_seconds)
        with database.engine.connect() as connection:
            coverage = q.feed_coverage(connection, feed.source_name(), spec.subjects, feed.granularity_seconds)
        if coverage is not None and coverage >= latest_closed:
            return dg.SkipReason(f"feed current up to {coverage.isoformat()}")
        return dg.RunRequest(
            run_key=f"{slug}:feed:{latest_closed.isoformat()}",
            partition_key=partitions.hour_key(latest_closed - timedelta(microseconds=1)),
            run_config=as_of_run_config([ChainKeys.op_name(keys.feed_records)], latest_closed),
        )

    @dg.sensor(
        name=f"{slug}__model_registry_sensor", default_status=status, minimum_interval_seconds=60,
        description="Keeps the models table current from the model runner (joins, leaves, state changes).",
    )
    def model_registry_sensor(
        context: dg.SensorEvaluationContext, database: CrunchDatabase, model_runner: ModelRunnerResource
    ):
        changes = sync_model_registry(database.engine, slug, model_runner.list_models(), datetime.now(timezone.utc))
        return dg.SkipReason(changes)

    @dg.schedule(
        name=f"{slug}__daily_rollup_schedule", job=jobs.rollup, cron_schedule="15 0 * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED,
        description="Yesterday's final snapshots and leaderboard, as of midnight UTC.",
    )
    def daily_rollup_schedule(context: dg.ScheduleEvaluationContext):
        yesterday = context.scheduled_execution_time.astimezone(timezone.utc) - timedelta(days=1)
        if yesterday < spec.start.replace(hour=0):
            return dg.SkipReason("the competition had not started yesterday")
        return dg.RunRequest(partition_key=partitions.day_key(yesterday))

    sensors = [cycle_sensor, feed_sensor, settlement_sensor, rollup_sensor, checkpoint_sensor, model_registry_sensor]
    return sensors, [daily_rollup_schedule]


def sync_model_registry(engine: sa.Engine, slug: str, listed: list[ModelInfo], now: datetime) -> str:
    """Upsert the runner's models; models no longer listed become GONE. Joins, leaves and state
    changes are recorded in model_events. Returns a one-line summary."""
    m = t.models
    with engine.begin() as connection:
        known = {
            row.model_id: row.state
            for row in connection.execute(sa.select(m.c.model_id, m.c.state).where(m.c.competition == slug))
        }
        events = []
        for info in listed:
            if info.model_id not in known:
                events.append(("JOINED", info.model_id, info.state))
            elif known[info.model_id] != info.state:
                events.append(("STATE_CHANGED", info.model_id, f"{known[info.model_id]} -> {info.state}"))
        q.upsert_models(connection, slug, listed, first_seen=now, last_seen=now)
        gone = sorted(set(known) - {info.model_id for info in listed} - {k for k, v in known.items() if v == "GONE"})
        if gone:
            connection.execute(sa.update(m).where(m.c.competition == slug, m.c.model_id.in_(gone)).values(state="GONE"))
            events += [("LEFT", model_id, "no longer listed by the model runner") for model_id in gone]
        if events:
            connection.execute(sa.dialects.postgresql.insert(t.model_events).values([
                {"competition": slug, "model_id": model_id, "event": event, "at": now, "reason": reason}
                for event, model_id, reason in events
            ]).on_conflict_do_nothing())
    states: dict[str, int] = {}
    for info in listed:
        states[info.state] = states.get(info.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "no models"
    changes = "; ".join(f"{event} {model_id}" for event, model_id, _ in events)
    return f"{summary}" + (f"; {changes}" if changes else "; no change")
