"""Sensors and schedules that run a competition live. Sensors only read (the store and the model
runner) and request runs; every write happens in an asset.

- cycle sensor: one live run per hour window (crunch_assets/defs/live_window/window.py: cycles, scores and rollups of
  the hour, as they fall due), replaced when it stops heartbeating; a live run for any past window
  with cycles missing inside the catch-up bound;
- settlement sensor: cycles no live run covers whose horizon has passed and whose feed is fetched
  -> scores; cycles past their void deadline -> a scores run that voids them;
- rollup sensor: new scores or voided cycles outside what the live run rolls up -> snapshots +
  leaderboard of their days;
- checkpoint sensor: a closed, settled and rolled-up period -> its checkpoint, in order; a
  PENDING checkpoint whose data changed is rebuilt;
- feed sensor: keeps the feed current between sparse cycles;
- model registry sensor: the runner's models differ from the registry -> a registry run;
- daily rollup schedule: yesterday's snapshots and leaderboard as of midnight (the final word).
Each evaluation is a few indexed queries: well inside Dagster's 60 s sensor timeout.
"""

from datetime import datetime, timedelta, timezone

import dagster as dg
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

from crunch_assets.defs.feed.assets import feed_streams
from crunch_assets.fingerprint import rules_book
from crunch_assets.jobs import CompetitionJobs
from crunch_assets.defs.live_window.window import COMPETITION_TAG, WINDOW_TAG, last_sign_of_life, stale_after_seconds
from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import CompetitionPartitions, floor_hour
from crunch_assets.defs.registry.assets import registry_changes
from crunch_assets.rules import CompetitionRules, GroundTruthResource
from crunch_assets.run_config import as_of_run_config
from crunch_assets.spec import CompetitionSpec
from resources.feeds.base import FeedResource
from resources.model_runners.base import ModelRunnerResource
from resources.store.database import CrunchDatabase

CHECKPOINTS_PER_TICK = 8
# A missed cycle is filled only once the run that should have stored it has had this long.
FILL_GRACE_SECONDS = 30


def _floor(instant: datetime, seconds: int) -> datetime:
    return datetime.fromtimestamp(int(instant.timestamp()) // seconds * seconds, tz=timezone.utc)


def build_sensors(
    spec: CompetitionSpec,
    partitions: CompetitionPartitions,
    keys: ChainKeys,
    jobs: CompetitionJobs,
    running: bool,
) -> tuple[list[dg.SensorDefinition], list[dg.ScheduleDefinition]]:
    slug = spec.slug
    status = dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED
    settle = timedelta(seconds=spec.settle_delay_seconds)

    stale_after = timedelta(seconds=stale_after_seconds(spec))

    def live_runs(instance: dg.DagsterInstance, now: datetime):
        """Per window start (ISO): whether a live run of it is alive (queued; launched and not started
        yet, for at most two minutes; or started and logging), its newest run's id, and when that run ended."""
        alive: dict[str, bool] = {}
        newest: dict[str, str] = {}
        recent_end: dict[str, datetime] = {}
        for record in instance.get_run_records(filters=dg.RunsFilter(
            job_name=jobs.live.name, tags={COMPETITION_TAG: slug}, created_after=now - timedelta(hours=3),
        )):  # newest first
            run = record.dagster_run
            window = run.tags.get(WINDOW_TAG)
            if window not in newest:
                newest[window] = run.run_id
                if record.end_time:
                    recent_end[window] = datetime.fromtimestamp(record.end_time, tz=timezone.utc)
            if run.status not in NOT_FINISHED_STATUSES:
                ok = False
            elif run.status == dg.DagsterRunStatus.STARTED:
                started = datetime.fromtimestamp(record.start_time or record.create_timestamp.timestamp(), tz=timezone.utc)
                last_sign = last_sign_of_life(instance, run.run_id) or started
                ok = now - last_sign < stale_after
            elif run.status == dg.DagsterRunStatus.CANCELING:
                ok = False
            elif run.status == dg.DagsterRunStatus.QUEUED:
                ok = True  # waiting for a slot of the run queue, not dead: a second one would queue beside it
            else:
                ok = now - record.create_timestamp.astimezone(timezone.utc) < timedelta(minutes=2)
            alive[window] = alive.get(window, False) or ok
        return alive, newest, recent_end

    def live_windows(instance: dg.DagsterInstance, now: datetime) -> dict[str, bool]:
        return live_runs(instance, now)[0]

    def live_request(window_start: datetime, replacing: str | None, why: str) -> dg.RunRequest:
        key = window_start.isoformat()
        return dg.RunRequest(
            # the first run of a window, or the one after a given run: a replacement is never deduplicated away
            run_key=f"{slug}:live:{key}:after:{replacing or 'none'}",
            run_config={"ops": {f"{slug}__live_window": {"config": {"window_start": key}}}},
            tags={WINDOW_TAG: key, "crunch/launched_because": why},
        )

    @dg.sensor(
        name=f"{slug}__cycle_sensor", job=jobs.live, default_status=status,
        minimum_interval_seconds=spec.cycle_sensor_interval_seconds,
        description="Keeps one live run per hour window going (launched before the hour, replaced when it stops "
                    "heartbeating) and fills the missed cycles of past windows.",
    )
    def cycle_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase):
        """The live run of an hour runs every cycle at its due time (see crunch_assets/defs/live_window/window.py). This
        sensor only makes sure one is alive for the current hour, launches the next hour's
        cycle_lead_seconds early (so its process has booted when the hour begins), replaces a run
        that stopped heartbeating (killed, machine lost), and launches a run for any past window
        with cycles missing inside the catch-up bound (a run killed at hh:59 leaves hh:59 missing)."""
        now = datetime.now(timezone.utc)
        if now < spec.start - timedelta(seconds=spec.cycle_lead_seconds):
            return dg.SkipReason(f"the competition starts at {spec.start.isoformat()}")
        alive, newest, recent_end = live_runs(context.instance, now)
        requests = []
        current = floor_hour(now)
        if current >= spec.start and not alive.get(current.isoformat()):
            requests.append(live_request(current, newest.get(current.isoformat()), "current window"))
        upcoming = current + timedelta(hours=1)
        if upcoming - now <= timedelta(seconds=spec.cycle_lead_seconds) and not alive.get(upcoming.isoformat()):
            requests.append(live_request(upcoming, newest.get(upcoming.isoformat()), "next window, launched early"))
        catch_up_from = max(now - timedelta(seconds=spec.max_catchup_seconds), spec.start)
        fill_until = min(now - timedelta(seconds=FILL_GRACE_SECONDS), current)
        expected = spec.cycle_times(catch_up_from, fill_until) if fill_until > catch_up_from else []
        if expected:
            stored = database.competition(slug).stored_cycles(expected[0][0], fill_until)
            missing = sorted({floor_hour(c) for c, scope in expected if (c, scope.key) not in stored})
            for window in missing:
                ended = recent_end.get(window.isoformat())
                if not alive.get(window.isoformat()) and (ended is None or now - ended > timedelta(seconds=60)):
                    requests.append(live_request(window, newest.get(window.isoformat()), "missed cycles in a past window"))
        return requests or dg.SkipReason(f"live run of {current.isoformat()} alive; nothing missing")

    @dg.sensor(
        name=f"{slug}__settlement_sensor", job=jobs.scores, default_status=status,
        minimum_interval_seconds=spec.settlement_sensor_interval_seconds,
        description="Scores cycles once their horizon has passed and the feed is fetched; voids what can never be resolved.",
    )
    def settlement_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase, feed: FeedResource):
        """A live run settles the windows its horizons reach back to; this sensor scores what no live
        run covers (after a pause, a backfill's hours) and voids what is past its deadline."""
        now = datetime.now(timezone.utc)
        store = database.competition(slug)
        live_from = None
        if live_windows(context.instance, now).get(floor_hour(now).isoformat()):
            live_from = floor_hour(now - timedelta(seconds=spec.max_horizon_seconds)) - timedelta(hours=1)
        fetched = database.feeds().fetched_until(feed_streams(spec, feed))
        if fetched is None:
            return dg.SkipReason("the feed has not been fetched yet")
        settled_until = _floor(min(fetched, now - settle), 1)  # spans end just after what they saw
        since = datetime.fromisoformat(context.cursor) if context.cursor else None
        hours = [h for h in store.unsettled_hours(since, settled_until) if live_from is None or h < live_from]
        overdue = [h for h in store.overdue_hours(now - timedelta(seconds=spec.void_after_seconds))
                   if live_from is None or h < live_from]
        requests = [
            dg.RunRequest(
                run_key=f"{slug}:scores:{hour.isoformat()}:{settled_until.isoformat()}",
                partition_key=partitions.hour_key(hour),
                run_config=as_of_run_config([keys.op("scores")], min(now, settled_until + settle)),
            )
            for hour in hours
        ] + [
            dg.RunRequest(
                run_key=f"{slug}:void:{hour.isoformat()}:{_floor(now, 60).isoformat()}",
                partition_key=partitions.hour_key(hour),
                run_config=as_of_run_config([keys.op("scores")], now),
            )
            for hour in overdue if hour not in hours
        ]
        context.update_cursor(settled_until.isoformat())
        return requests or dg.SkipReason(f"nothing newly settled up to {settled_until.isoformat()}")

    @dg.sensor(
        name=f"{slug}__rollup_sensor", job=jobs.rollup, default_status=status, minimum_interval_seconds=300,
        description="Refreshes snapshots and the leaderboard of the days that got new scores or voided cycles.",
    )
    def rollup_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase):
        store = database.competition(slug)
        marker = store.change_marker()
        if marker == context.cursor:
            return dg.SkipReason("no new scores or voided cycles")
        last_score_id, last_voided = (int(x) for x in (context.cursor or "0:0").split(":"))
        now = datetime.now(timezone.utc)
        days: set[datetime] = set()
        first, last = store.changed_days(last_score_id)
        live_rolls_up_from = floor_hour(now) - timedelta(hours=2)
        live = live_windows(context.instance, now).get(floor_hour(now).isoformat(), False)
        if live and first is not None and first >= live_rolls_up_from:
            first = None  # the live run rolls these hours up itself
        if first is not None:
            day = first.replace(hour=0, minute=0, second=0, microsecond=0)
            while day <= last:
                days.add(day)
                day += timedelta(days=1)
        if int(marker.split(":")[1]) != last_voided:  # voided cycles of periods not yet paid
            # today's too: the live run rolls up only its last hours, and a cycle can be voided later
            days.update(store.voided_days(store.locked_until()))
        as_of = _floor(now, 60)
        requests = [
            dg.RunRequest(
                run_key=f"{slug}:rollup:{day.date().isoformat()}:{marker}",
                partition_key=partitions.day_key(day),
                run_config=as_of_run_config([keys.op("snapshots"), keys.op("leaderboard")],
                                            min(as_of, day + timedelta(days=1))),
            )
            for day in sorted(days) if day <= now
        ]
        context.update_cursor(marker)
        return requests or dg.SkipReason("nothing to roll up")

    @dg.sensor(
        name=f"{slug}__checkpoint_sensor", job=jobs.checkpoint, default_status=status, minimum_interval_seconds=300,
        description="Builds the checkpoint of each closed period once it is settled and rolled up, in order; "
                    "rebuilds a PENDING one whose data changed.",
    )
    def checkpoint_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase, rules: CompetitionRules,
                          ground_truth: GroundTruthResource):
        now = datetime.now(timezone.utc)
        store = database.competition(slug)
        periods = partitions.checkpoint
        first_cycle = store.first_cycle_since(spec.start)
        if first_cycle is None:
            return dg.SkipReason("no cycles yet")
        ready_before = now - timedelta(seconds=spec.max_horizon_seconds) - settle
        requests, new_keys, waiting = [], [], []
        for key, start, end in periods.periods_between(first_cycle, ready_before)[:CHECKPOINTS_PER_TICK * 4]:
            existing = store.checkpoint(start, end)
            if existing is not None and existing.status != "PENDING":
                continue
            unsettled = store.unsettled_count(start, end)
            fingerprint = store.period_fingerprint(start, end)
            summarised = store.summarised_count(start, end)
            if unsettled or fingerprint["scores"] != summarised:
                waiting.append(f"{key}: {unsettled} unsettled, {fingerprint['scores']} scores vs {summarised} summarised")
                break  # in order: later periods wait for this one
            previous = store.previous_checkpoint(start)
            # built under other rules than loaded now (a deployment changed them): rebuilt too
            book = rules_book(spec, rules, ground_truth)
            rules_fingerprint = book.checkpoint_version(start, end).fingerprint
            up_to_date = existing is not None and existing.meta.get("fingerprint") == fingerprint and (
                existing.meta.get("previous_chained_root") == (previous.chained_root if previous else None)
            ) and existing.meta.get("rules_fingerprint") == rules_fingerprint and (
                existing.meta.get("rules_schedule") == book.period_schedule_digest(start, end))
            if fingerprint["scores"] and not up_to_date:
                if periods.is_dynamic:
                    new_keys.append(key)
                requests.append(dg.RunRequest(
                    run_key=f"{slug}:checkpoint:{key}:{fingerprint['scores']}:{fingerprint['last_score_id']}:"
                            f"{fingerprint['voided_cycles']}:{fingerprint.get('copy_resolution_id')}:"
                            f"{previous.chained_root if previous else ''}:{rules_fingerprint[:16]}:"
                            f"{book.period_schedule_digest(start, end)[:16]}",
                    partition_key=key,
                ))
                break  # one at a time: the next one chains to this one's root
        if not requests:
            return dg.SkipReason("; ".join(waiting) or "every closed period is checkpointed and current")
        dynamic = [periods.definition.build_add_request(new_keys)] if new_keys else []
        return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=dynamic)

    @dg.sensor(
        name=f"{slug}__feed_sensor", job=jobs.feed, default_status=status,
        minimum_interval_seconds=max(spec.feed_poll_interval_seconds, spec.settlement_sensor_interval_seconds),
        description="Keeps the feed current between cycles (ground truth for sparse cycles).",
    )
    def feed_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase, feed: FeedResource):
        now = datetime.now(timezone.utc)
        if live_windows(context.instance, now).get(floor_hour(now).isoformat()):
            return dg.SkipReason("the live run keeps the feed current")
        step = max(feed.granularity_seconds, 1)
        latest_closed = _floor(now, step)
        fetched = database.feeds().fetched_until(feed_streams(spec, feed))
        if fetched is not None and fetched > latest_closed:
            return dg.SkipReason(f"feed fetched up to {fetched.isoformat()}")
        return dg.RunRequest(
            run_key=f"{slug}:feed:{latest_closed.isoformat()}",
            partition_key=partitions.hour_key(latest_closed - timedelta(microseconds=1)),
            run_config={"ops": {keys.op("feed_records"): {"config": {"as_of": latest_closed.isoformat()}}}},
        )

    @dg.sensor(
        name=f"{slug}__model_registry_sensor", job=jobs.registry, default_status=status,
        minimum_interval_seconds=spec.registry_sensor_interval_seconds,
        description="Requests a model registry sync when the runner's models differ from the registry.",
    )
    def model_registry_sensor(
        context: dg.SensorEvaluationContext, database: CrunchDatabase, model_runner: ModelRunnerResource
    ):
        stored = {m.model_id: m.state for m in database.competition(slug).models()}
        changes = registry_changes(stored, model_runner.list_models())
        if not changes and stored and context.instance.get_latest_materialization_event(keys.model_registry) is None:
            changes = ["never materialized"]  # the store holds models the UI has never shown
        if not changes:
            return dg.SkipReason(f"{len(stored)} model(s), no change")
        return dg.RunRequest(run_key=f"{slug}:registry:{'|'.join(changes)}:{_floor(datetime.now(timezone.utc), 60).isoformat()}",
                             tags={"crunch/registry_changes": "; ".join(changes)[:200]})

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
