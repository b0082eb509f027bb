"""The live window: one long-lived run per competition and hour does the hour's live work.

Starting a Dagster run costs a process and ~2 CPU-seconds. A run per cycle is what made the live
deployment expensive. So the cycle sensor launches one `<slug>__live_job` run per hour window.
That run keeps the model processes warm and, at every cycle's due time, calls the same stage
functions a backfill calls, as of that instant:
- `feed.ingest`: fetch what is not fetched yet;
- `predictions.run_cycles`: every due cycle of the window not stored yet (a catch-up included);
- `scores.settle`: every cycle that has resolved, over the windows its horizons reach back to.

Between cycles it polls the feed and settles every `poll_seconds`, so scores follow the feed within
seconds. Every minute it rolls up the current hours and refreshes the live leaderboard, stored as
of the last scored cycle (never a time still to come). When its window begins it records the
hour's partitions as planned, so the UI shows them in progress (failed if the run dies); when the
window is over, it reports each asset partition it materialized (feed, predictions, scores, the
day's snapshots and the leaderboard with its table), with the partition's own figures and the
asset checks, and exits. A session that registers new models materializes `model_registry`.

The run is launched `cycle_lead_seconds` before its hour and starts its model processes at once
(`prewarm_models`), while the previous hour's run still serves its last cycles: at the handover the
new hour's first cycle finds its models ready (the two runs' model processes overlap for the lead).

The numbers are a backfill's: same functions, same store, same as_of discipline. Each wake-up
stamps the run's heartbeat, one row of Dagster's key-value store rewritten in place (a log line
per poll cost ~0.5 KB of event log each), and a line is logged when a cycle is stored or scored, so
the UI shows each cycle. A run that dies (kill -9, lost machine) stops beating, and the cycle sensor
launches a replacement, which marks the dead run failed and catches up. A tick that fails is logged and retried at the next tick; after `MAX_FAILED_TICKS` in
a row the run fails, so the failure is visible and a fresh run takes over.
"""

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import dagster as dg
import sqlalchemy as sa
from dagster._core.storage.runs.schema import KeyValueStoreTable

from crunch_assets.defs.feed import checks as feed_checks
from crunch_assets.defs.predictions import checks as prediction_checks
from crunch_assets.defs.scores import checks as score_checks
from crunch_assets.defs.feed.assets import FeedReport, ingest
from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import CompetitionPartitions, ceil_hour, floor_hour
from crunch_assets.defs.predictions.assets import CycleReport, SessionOnDemand, run_cycles
from crunch_assets.defs.registry.assets import report_registry_sync
from crunch_assets.defs.rollups.assets import current_period, leaderboard_entries, leaderboard_metadata, roll_up
from crunch_assets.rules import CompetitionRules, GroundTruthResource
from crunch_assets.defs.scores.assets import SettleReport, settle
from crunch_assets.spec import CompetitionSpec
from resources import clock
from resources.feeds.base import FeedResource
from resources.model_runners.base import ModelRunnerResource
from resources.store.database import CrunchDatabase

WINDOW_TAG = "crunch/live_window"
COMPETITION_TAG = "crunch/competition"
MAX_FAILED_TICKS = 5
ROLLUP_EVERY_SECONDS = 60
PROGRESS_EVERY_SECONDS = 10  # well inside stale_after_seconds (>= 40 s)
HOUR = timedelta(hours=1)


class LiveWindowConfig(dg.Config):
    window_start: str  # ISO-8601 UTC start of the hour window this run serves
    stop_at: str | None = None  # end the run early, after this instant's tick (tests, benchmarks)


def poll_seconds(spec: CompetitionSpec) -> float:
    """How often the run wakes between cycles (feed, settlement, heartbeat)."""
    return float(min(spec.min_interval_seconds, spec.feed_poll_interval_seconds, 30))


def stale_after_seconds(spec: CompetitionSpec) -> float:
    """A live run whose heartbeat is this old is taken for dead."""
    return max(40.0, 2.5 * poll_seconds(spec))


@dataclass
class WindowProgress:
    feed: FeedReport = field(default_factory=FeedReport)
    cycles: CycleReport = field(default_factory=CycleReport)
    settled: SettleReport = field(default_factory=SettleReport)
    ticks: int = 0
    failed_ticks: int = 0


@dataclass(frozen=True)
class LiveLeaderboard:
    as_of: datetime  # the last scored cycle
    period: tuple[datetime, datetime]
    entries: list[dict]


class LiveWindow:
    """One hour window's live work; `tick(as_of)` is one wake-up."""

    def __init__(self, spec, partitions, rules, feed, ground_truth, model_runner, database, session, log,
                 beat: Callable[[], None] = lambda: None):
        self.spec, self.partitions, self.rules, self.feed = spec, partitions, rules, feed
        self.ground_truth, self.model_runner, self.log, self.beat = ground_truth, model_runner, log, beat
        self.store, self.feeds = database.competition(spec.slug), database.feeds()
        self.session = session
        self.progress = WindowProgress()
        self.last_rollup = 0.0
        self.last_progress = time.monotonic()
        self.rolled_up_until: datetime | None = None
        self.leaderboard: LiveLeaderboard | None = None  # the last one this run stored

    def settle_from(self, start: datetime) -> datetime:
        """Cycles that can still resolve now started at most the longest horizon before."""
        return floor_hour(start - timedelta(seconds=self.spec.max_horizon_seconds)) - HOUR

    def tick(self, start: datetime, as_of: datetime, final: bool = False) -> None:
        end = start + HOUR
        report = ingest(self.spec, self.feed, self.feeds, start, end, as_of, log=self.log)
        self.progress.feed.merge(report)  # the one merge a feed_records run uses too
        self.progress.cycles.merge(run_cycles(
            self.spec, self.rules, self.feed, self.store, self.feeds, self.session,
            self.model_runner.call_timeout_seconds, start, end, as_of, log=self.log, on_cycle=self.cycle_progress,
        ))
        self.progress.settled.merge(settle(
            self.spec, self.rules, self.ground_truth, self.feed, self.store, self.feeds,
            self.settle_from(start), end, as_of, log=self.log,
        ))
        if final or time.monotonic() - self.last_rollup >= ROLLUP_EVERY_SECONDS:
            self.roll_up(as_of)
        self.progress.ticks += 1

    def cycle_progress(self, cycle_at: datetime, done: int, total: int) -> None:
        """During a catch-up (many cycles in one tick, slow models), log progress and beat every
        PROGRESS_EVERY_SECONDS, so the UI shows it and a long tick is not taken for a dead run."""
        now = time.monotonic()
        if total > 1 and now - self.last_progress >= PROGRESS_EVERY_SECONDS:
            self.log.info(f"catching up: cycle {cycle_at.isoformat(timespec='seconds')} run ({done} of {total})")
            self.beat()
            self.last_progress = now

    def roll_up(self, as_of: datetime) -> None:
        """The hours that can change live, and the live leaderboard: stored as of the last scored
        cycle (what it really shows; never a time still to come), its windows ending with that
        cycle's hour, one row per hour refreshed in place."""
        scored_until = self.store.last_scored_cycle()  # read first: the rollup below includes it
        roll_up(self.spec, self.rules, self.store, floor_hour(as_of) - 2 * HOUR, ceil_hour(as_of))
        self.rolled_up_until = as_of
        if scored_until is not None:
            period = current_period(self.spec, self.partitions, scored_until)
            windows_end = floor_hour(scored_until) + HOUR
            entries = leaderboard_entries(self.spec, self.rules, self.store, windows_end, period)
            if self.store.write_live_leaderboard(scored_until, entries, {
                "period_start": period[0].isoformat(), "period_end": period[1].isoformat(),
                "windows_end": windows_end.isoformat(),
            }):
                self.leaderboard = LiveLeaderboard(scored_until, period, entries)
        self.last_rollup = time.monotonic()


def prewarm_models(session: SessionOnDemand, start: datetime, lead_seconds: float, log) -> float | None:
    """Start the hour's model processes before the hour, while the previous hour's run still serves
    its last cycles, so the first cycle of the hour finds them ready instead of waiting for a
    thousand imports. Returns the seconds it took (None if the session could not be opened: logged,
    and left to the first tick); a start that ran past the hour is logged with what to raise (the
    sensor launches this run `cycle_lead_seconds` before the hour)."""
    started = time.monotonic()
    try:
        session.get()
    except Exception as error:  # the hour's first tick opens it again and fails as a tick does
        log.error(f"the models could not be made ready before the window: {type(error).__name__}: {error}")
        return None
    seconds = time.monotonic() - started
    late_seconds = (clock.now() - start).total_seconds()
    # (local models: their processes started; orchestrated ones: the session connected to every node)
    if late_seconds > 0:
        log.warning(f"the models took {seconds:.1f} s to be ready and were ready {late_seconds:.1f} s after "
                    f"the window began: the first cycles of the hour waited for them; raise cycle_lead_seconds "
                    f"(now {lead_seconds:g}) well above the {seconds:.1f} s the models took (the run's own start comes first)")
    else:
        log.info(f"the models were ready in {seconds:.1f} s, {-late_seconds:.1f} s before the window begins")
    return seconds


def _next_wake(spec: CompetitionSpec, start: datetime, now: datetime) -> datetime:
    """The next cycle due in the window after now, or the next poll, whichever comes first."""
    due = [cycle_at for cycle_at, _ in spec.cycle_times(now + timedelta(microseconds=1), start + HOUR)]
    poll = now + timedelta(seconds=poll_seconds(spec))
    return min([poll, start + HOUR, *due[:1]])


def _heartbeat_key(run_id: str) -> str:
    return f"crunch/live_heartbeat/{run_id}"


def beat(instance: dg.DagsterInstance, run_id: str, log=None) -> None:
    """Stamp the run's heartbeat: one key-value row, rewritten in place. A failed stamp (the
    database restarting) is logged, never fatal: the next wake-up stamps again."""
    try:
        instance.run_storage.set_cursor_values({_heartbeat_key(run_id): repr(clock.now().timestamp())})
    except Exception as error:
        if log is not None:
            log.warning(f"heartbeat not stamped: {type(error).__name__}: {error}")


def forget_heartbeat(instance: dg.DagsterInstance, run_id: str) -> None:
    """Drop a run's heartbeat row (Dagster's key-value API has no delete)."""
    connect = getattr(instance.run_storage, "connect", None)
    if connect is not None:
        with connect() as connection:
            connection.execute(KeyValueStoreTable.delete().where(KeyValueStoreTable.c.key == _heartbeat_key(run_id)))


def forget_finished_heartbeats(instance: dg.DagsterInstance) -> int:
    """Drop the heartbeat rows of runs that are over or gone (a killed run cannot drop its own)."""
    connect = getattr(instance.run_storage, "connect", None)
    if connect is None:
        return 0
    prefix = _heartbeat_key("")
    with connect() as connection:
        keys = connection.execute(sa.select(KeyValueStoreTable.c.key).where(KeyValueStoreTable.c.key.startswith(prefix))).scalars().all()
    finished = []
    for key in keys:
        run = instance.get_run_by_id(key[len(prefix):])
        if run is None or run.is_finished:
            finished.append(key)
    if finished:
        with connect() as connection:
            connection.execute(KeyValueStoreTable.delete().where(KeyValueStoreTable.c.key.in_(finished)))
    return len(finished)


def last_sign_of_life(instance: dg.DagsterInstance, run_id: str) -> datetime | None:
    """The run's newest heartbeat or event, whichever is later (a run beats at every wake-up)."""
    key = _heartbeat_key(run_id)
    stamped = instance.run_storage.get_cursor_values({key}).get(key)
    records = instance.get_records_for_run(run_id, limit=1, ascending=False).records
    times = [datetime.fromtimestamp(float(stamped), tz=timezone.utc)] if stamped else []
    if records:
        times.append(datetime.fromtimestamp(records[0].event_log_entry.timestamp, tz=timezone.utc))
    return max(times, default=None)


def mark_dead_predecessors(context: dg.OpExecutionContext, spec: CompetitionSpec, window_key: str) -> list[str]:
    """Other runs of this window still marked in progress whose heartbeat is stale died: mark them
    failed (the DefaultRunLauncher cannot tell), so the record says what happened."""
    instance = context.instance
    stale_before = clock.now() - timedelta(seconds=stale_after_seconds(spec))
    marked = []
    for run in instance.get_runs(filters=dg.RunsFilter(
        tags={WINDOW_TAG: window_key, COMPETITION_TAG: spec.slug}, statuses=[dg.DagsterRunStatus.STARTED]
    )):
        if run.run_id == context.run_id:
            continue
        last_beat = last_sign_of_life(instance, run.run_id)
        if last_beat is None or last_beat < stale_before:
            instance.report_run_failed(run, message=f"no sign of life since {last_beat}: taken over by run {context.run_id}")
            marked.append(run.run_id)
    return marked


def build_live_job(spec: CompetitionSpec, partitions: CompetitionPartitions, keys: ChainKeys) -> dg.JobDefinition:
    slug = spec.slug

    @dg.op(name=f"{slug}__live_window", description="Runs an hour window live: every cycle at its due time, "
           "scores as the feed arrives, rollups every minute.")
    def live_window(
        context: dg.OpExecutionContext,
        config: LiveWindowConfig,
        database: CrunchDatabase,
        feed: FeedResource,
        rules: CompetitionRules,
        model_runner: ModelRunnerResource,
        ground_truth: GroundTruthResource,
    ) -> None:
        start = floor_hour(datetime.fromisoformat(config.window_start))
        window_key = start.isoformat()
        for run_id in mark_dead_predecessors(context, spec, window_key):
            context.log.warning(f"run {run_id} of this window stopped heartbeating: marked failed, taking over")
        forget_finished_heartbeats(context.instance)
        end = start + HOUR
        stop = min(end, datetime.fromisoformat(config.stop_at)) if config.stop_at else end
        with ExitStack() as stack:
            stack.callback(forget_heartbeat, context.instance, context.run_id)
            live = LiveWindow(spec, partitions, rules, feed, ground_truth, model_runner, database,
                              SessionOnDemand(model_runner, rules, stack), context.log,
                              beat=lambda: beat(context.instance, context.run_id, context.log))
            logged = None  # the progress last logged: a line per change, not per wake-up
            planned = False
            registry_reported = 0  # the registry changes already materialized
            while True:
                live.beat()
                now = clock.now()
                if now >= start:
                    if not planned:  # the hour's partitions show in progress until reported below
                        plan_window(context.instance, context.run_id, context.job_name,
                                    context.get_step_execution_context().step.key, partitions, keys, start)
                        planned = True
                    final = now >= stop
                    as_of = min(now, end - timedelta(microseconds=1))
                    try:
                        live.tick(start, as_of, final=final)
                        live.progress.failed_ticks = 0
                        if len(live.progress.cycles.registry_changes) > registry_reported:
                            report_registry_sync(context, keys, live.store,
                                                 live.progress.cycles.registry_changes[registry_reported:], model_runner)
                            registry_reported = len(live.progress.cycles.registry_changes)
                    except Exception as error:  # a tick never takes the hour down with it
                        live.progress.failed_ticks += 1
                        final = False  # the last tick is retried too
                        context.log.error(f"tick at {as_of.isoformat()} failed ({live.progress.failed_ticks} in a row): "
                                          f"{type(error).__name__}: {error}")
                        if live.progress.failed_ticks >= MAX_FAILED_TICKS:
                            raise
                    progress = (sum(live.progress.cycles.cycles_run.values()),
                                sum(c.get("scored", 0) + c.get("penalised", 0) for c in live.progress.settled.by_hour.values()))
                    if progress != logged or final:
                        context.log.info(f"{as_of.isoformat(timespec='seconds')}: {progress[0]} of "
                                         f"{len(spec.cycle_times(start, end))} cycle(s) of the hour stored in this run, "
                                         f"{progress[1]} prediction(s) scored")
                        logged = progress
                    if final:
                        break
                elif logged is None:
                    context.log.info(f"waiting for the window to begin at {start.isoformat()}")
                    prewarm_models(live.session, start, spec.cycle_lead_seconds, context.log)
                    logged = ()
                now = clock.now()
                wake = min(start, now + timedelta(seconds=poll_seconds(spec))) if now < start else _next_wake(spec, start, now)
                wake = min(wake, max(stop, now))
                clock.sleep(max(0.0, (wake - clock.now()).total_seconds()))
        report_window(context, spec, partitions, keys, live, start, min(stop, clock.now()))

    return dg.JobDefinition(
        name=f"{slug}__live_job",
        description="One hour window of live cycles, scores and rollups (launched by the cycle sensor).",
        graph_def=dg.GraphDefinition(name=f"{slug}__live_graph", node_defs=[live_window]),
        executor_def=dg.in_process_executor,
        # The cycle sensor replaces a dead live run (and knows which one it replaces): Dagster's run
        # retries would start a second one. A queued live run goes ahead of batch runs (catch-ups).
        tags={COMPETITION_TAG: slug, "dagster/max_retries": "0", "dagster/priority": "100"},
    )


def window_partitions(partitions: CompetitionPartitions, keys: ChainKeys, start: datetime) -> list[tuple[dg.AssetKey, str]]:
    """The asset partitions a live window run materializes: its hour's, and its day's rollups."""
    hour, day = partitions.hour_key(start), partitions.day_key(start)
    return [(keys.feed_records, hour), (keys.predictions, hour), (keys.scores, hour),
            (keys.snapshots, day), (keys.leaderboard, day)]


def plan_window(instance: dg.DagsterInstance, run_id: str, job_name: str, step_key: str,
                partitions: CompetitionPartitions, keys: ChainKeys, start: datetime) -> None:
    """Record that run `run_id` will materialize the window's partitions, as an asset run records
    it when it starts: Dagster then shows them in progress while the run lives, materialized once
    report_window has reported them, failed if the run dies first (and in progress again when a
    replacement plans them). Five rows per hour: the live progress itself is the run's log."""
    from dagster._core.events import AssetMaterializationPlannedData  # not exported: see docs/dagster-internals.md

    for asset_key, partition in window_partitions(partitions, keys, start):
        instance.report_dagster_event(
            dg.DagsterEvent.build_asset_materialization_planned_event(
                job_name, step_key, AssetMaterializationPlannedData(asset_key, partition=partition)),
            run_id=run_id,
        )


def report_window(context, spec: CompetitionSpec, partitions: CompetitionPartitions, keys: ChainKeys,
                  live: LiveWindow, start: datetime, until: datetime) -> None:
    """The window's asset partitions as materialized by this run, each with its own figures, and
    the checks that guard them. The leaderboard's carries its table, as of the last scored cycle."""
    key = partitions.hour_key(start)
    progress, store = live.progress, live.store
    context.log_event(dg.AssetMaterialization(keys.feed_records, partition=key, metadata={
        "records_observed_in_hour": progress.feed.observed_by_hour.get(start, 0), **progress.feed.metadata()}))
    context.log_event(dg.AssetMaterialization(keys.predictions, partition=key, metadata={
        **progress.cycles.hour_metadata(start), "window_status_counts": store.prediction_statuses(start, start + HOUR),
        "cycles_due_until_now": len(spec.cycle_times(start, min(until, start + HOUR))),
        "quarantines_started": progress.cycles.quarantines, "live_run": True}))
    for hour in sorted(set(progress.settled.by_hour) | {start}):
        context.log_event(dg.AssetMaterialization(keys.scores, partition=partitions.hour_key(hour), metadata={
            **progress.settled.hour_metadata(hour), "still_unscored": store.unsettled_count(hour, hour + HOUR)}))
    day = partitions.day_key(start)
    if live.rolled_up_until is not None:
        context.log_event(dg.AssetMaterialization(keys.snapshots, partition=day, metadata={
            "live_rollup_until": live.rolled_up_until.isoformat()}))
    if live.leaderboard is not None:
        board = live.leaderboard
        context.log_event(dg.AssetMaterialization(
            keys.leaderboard, partition=partitions.day_key(board.as_of),
            metadata=leaderboard_metadata(spec, board.as_of, board.period, board.entries, live=True)))
    for result in (
        # the gap check a feed_records run evaluates: a defect accepted as missing is named here too
        feed_checks.check_feed_complete(spec, live.feed, live.feeds, keys.feed_records, start, min(until, start + HOUR)),
        prediction_checks.check_every_cycle_stored(spec, store, keys.predictions, start, min(until, start + HOUR),
                                                   [reason for _, reason in progress.cycles.waiting]),
        score_checks.check_scores_finite(store, keys.scores, start, start + HOUR),
    ):
        context.log_event(dg.AssetCheckEvaluation(
            asset_key=result.asset_key, check_name=result.check_name, passed=result.passed,
            metadata=result.metadata, severity=result.severity,
        ))
