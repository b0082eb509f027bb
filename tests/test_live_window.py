"""The live window run (crunch_assets/defs/live_window/window.py) on the real clock: it runs each cycle at its due time,
scores cycles as their horizon passes, heartbeats, reports its partitions, and stores exactly what
a backfill of the same window stores. And the cycle sensor that keeps one alive per hour."""

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.test_utils import create_run_for_test

from crunch_assets.defs.live_window.window import WINDOW_TAG, last_sign_of_life
from resources.clock import TestClock, use_clock
from resources.store.database import dispose_engines, engine_for

SLUG = "btc_updown"


def _fast_spec(start, ensemble: bool = False):
    from competitions.btc_updown.definitions import ENSEMBLES, METRICS, SPEC
    from crunch_assets.spec import Scope

    # a tick every 5 s, a cycle every 10 s resolving 20 s later: a few cycles in under a minute
    spec = replace(SPEC, start=start, scopes=(Scope("BTC", 20, 10),), max_price_staleness_seconds=5, history_seconds=60)
    return replace(spec, ensembles=ENSEMBLES, metrics=METRICS) if ensemble else spec


def _definitions(spec, tmp_path):
    from competitions.btc_updown.definitions import RULES
    from crunch_assets.definitions import build_competition_definitions
    from crunch_assets.rules import CallableRules
    from resources.feeds.synthetic import SyntheticFeed
    from tests.rewards_fixtures import write_models

    rules = CallableRules(**{**{n: getattr(RULES, n) for n in CallableRules.model_fields},
                             "input_builder": "tests.test_engine_shapes:tick_input"})
    return build_competition_definitions(
        spec, rules, models_dir=write_models(tmp_path / "models", ["coin", "oracle"]),
        feed=SyntheticFeed(kind="tick", granularity_seconds=0, tick_interval_seconds=5), automation_running=False,
    )


def _stored(engine, cycles):
    with engine.connect() as connection:
        inputs = connection.execute(sa.text(
            "SELECT cycle_at, raw_data FROM crunch.inputs WHERE cycle_at = ANY(:c) ORDER BY 1"), {"c": cycles}).fetchall()
        scores = connection.execute(sa.text(
            "SELECT p.cycle_at, p.model_id, p.inference_output, s.value FROM crunch.predictions p "
            "JOIN crunch.scores s ON s.prediction_id = p.id WHERE p.cycle_at = ANY(:c) ORDER BY 1, 2"), {"c": cycles}).fetchall()
    return [tuple(r) for r in inputs], [tuple(r) for r in scores]


class _WatchedClock(TestClock):
    """A test clock that notes, at each wait of the run, which cycles the store holds by then: the
    clock stands still inside a tick, so a cycle first seen at a wait was stored at that time."""

    __test__ = False

    def __init__(self, at, engine):
        super().__init__(at)
        self.engine, self.first_seen = engine, {}

    def sleep(self, seconds):
        with self.engine.connect() as connection:
            stored = connection.execute(sa.text("SELECT DISTINCT cycle_at FROM crunch.predictions")).scalars().all()
        for cycle_at in stored:
            self.first_seen.setdefault(cycle_at, self.now())
        super().sleep(seconds)


@pytest.mark.parametrize("ensemble", [False, True], ids=["models", "with_an_ensemble"])
def test_a_live_window_runs_cycles_when_due_and_equals_a_backfill(clean_database, tmp_path, ensemble):
    # on a test clock two minutes into a past hour (Dagster lists partitions up to the wall time): the
    # run's waits advance the clock at once
    window = datetime(2026, 11, 5, 13, tzinfo=timezone.utc)
    now = window + timedelta(minutes=2, seconds=3)
    spec = _fast_spec(window, ensemble)
    defs = _definitions(spec, tmp_path)
    stop = now + timedelta(seconds=45)
    instance = dg.DagsterInstance.ephemeral()
    job = defs.get_job_def(f"{SLUG}__live_job")
    engine = engine_for()
    with use_clock(_WatchedClock(now, engine)) as clock:
        result = job.execute_in_process(
            run_config={"ops": {f"{SLUG}__live_window": {"config": {"window_start": window.isoformat(), "stop_at": stop.isoformat()}}}},
            instance=instance, resources=defs.resources,
        )
        clock.sleep(0)  # what the last tick stored
    assert result.success
    assert clock.now() >= stop  # the run went on to its stop on the clock
    with engine.connect() as connection:
        stored = connection.execute(sa.text(
            "SELECT DISTINCT cycle_at FROM crunch.predictions ORDER BY 1")).scalars().all()
        scored = connection.execute(sa.text("SELECT DISTINCT cycle_at FROM crunch.scores ORDER BY 1")).scalars().all()
    due = [c for c, _ in spec.cycle_times(window, stop)]
    assert stored == due  # every due cycle of the window so far (the catch-up included)
    live_cycles = [c for c in stored if c >= now]
    # run when due, never before: each cycle was first stored at a time of the clock at or after it
    assert live_cycles and all(clock.first_seen[c] >= c for c in live_cycles), clock.first_seen
    assert [c for c in scored if c >= now] == [c for c in live_cycles if c + timedelta(seconds=20) <= stop]
    # it logged to the end (its events carry the wall time, the engine's time is in its progress lines)
    progress = [e.user_message for e in instance.all_logs(result.run_id) if " cycle(s) of the hour stored" in e.user_message]
    assert progress and datetime.fromisoformat(progress[-1].split(": ", 1)[0]) >= stop, progress[-3:]
    materialized = {(m.asset_key.to_user_string(), m.partition) for m in result.asset_materializations_for_node(f"{SLUG}__live_window")}
    hour_key = window.strftime("%Y-%m-%d-%H:00")
    assert {(f"{SLUG}/feed_records", hour_key), (f"{SLUG}/predictions", hour_key), (f"{SLUG}/scores", hour_key)} <= materialized
    checks = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert {(c.check_name, c.passed) for c in checks} == {("feed_has_every_candle", True),  # ticks: no cadence to check
                                                          ("every_due_cycle_has_predictions", True),
                                                          ("scores_are_finite_and_unique", True)}
    live = _stored(engine, list(live_cycles))
    # the ensemble is built with each cycle live, scored with it (ensembles.py)
    assert any(model == "__ensemble_main__" for _, model, _, _ in live[1]) == ensemble

    # the same window as a backfill, into an empty store, once the horizons have passed
    with engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA crunch CASCADE"))
    dispose_engines()
    from tests.rewards_fixtures import materialize_hours

    from crunch_assets.run_config import as_of_run_config

    with use_clock(TestClock(stop + timedelta(seconds=30))):  # the horizons of the live cycles have passed
        materialize_hours(defs, spec, ["feed_records"], window, window)
        # the cycles up to where the live run stopped (a cycle due after the feed fetch above would wait for it)
        materialize_hours(defs, spec, ["predictions"], window, window,
                          run_config=as_of_run_config([f"{SLUG}__predictions"], stop))
        materialize_hours(defs, spec, ["scores"], window, window, raise_on_error=False)
    backfill = _stored(engine_for(), list(live_cycles))
    assert backfill[0] == live[0]  # the same inputs
    assert [r for r in backfill[1] if (r[0], r[1]) in {(x[0], x[1]) for x in live[1]}] == live[1]


def _sensor(defs):
    return next(s for s in defs.sensors if s.name == f"{SLUG}__cycle_sensor")


def test_the_cycle_sensor_keeps_one_live_run_per_window_and_replaces_a_dead_one(clean_database, tmp_path):
    from competitions.btc_updown.definitions import SPEC, build_definitions

    # the sensor decides on a test clock standing at the wall time the test began (Dagster stamps run
    # records with the wall time): no hour can turn between the test's reading and the sensor's
    now = datetime.now(timezone.utc)
    spec = replace(SPEC, start=now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=3))
    defs = build_definitions(spec=spec, automation_running=True)
    instance = dg.DagsterInstance.ephemeral()

    def tick():
        with use_clock(TestClock(now)):
            return _sensor(defs).evaluate_tick(dg.build_sensor_context(instance=instance, resources=defs.resources,
                                                                       definitions=defs))

    window = now.replace(minute=0, second=0, microsecond=0).isoformat()
    first = tick()
    current = [r for r in first.run_requests if r.tags[WINDOW_TAG] == window]
    assert len(current) == 1 and current[0].run_config["ops"][f"{SLUG}__live_window"]["config"]["window_start"] == window
    job_name = f"{SLUG}__live_job"
    tags = {WINDOW_TAG: window, "crunch/competition": SLUG}
    run = create_run_for_test(instance, job_name=job_name, status=dg.DagsterRunStatus.STARTED, tags=tags)
    assert not [r for r in tick().run_requests if r.tags[WINDOW_TAG] == window]  # alive: nothing to do
    # its heartbeat is five minutes old (killed): a replacement is requested, with a new run key
    from crunch_assets.defs.live_window.window import beat, forget_finished_heartbeats, forget_heartbeat

    key = f"crunch/live_heartbeat/{run.run_id}"
    instance.run_storage.set_cursor_values({key: repr((now - timedelta(minutes=5)).timestamp())})
    assert last_sign_of_life(instance, run.run_id) == now - timedelta(minutes=5)
    replacement = [r for r in tick().run_requests if r.tags[WINDOW_TAG] == window]
    assert len(replacement) == 1 and replacement[0].run_key != current[0].run_key
    with use_clock(TestClock(now)):
        beat(instance, run.run_id)  # it beats again (one row, rewritten in place): alive
    assert not [r for r in tick().run_requests if r.tags[WINDOW_TAG] == window]
    # killed: run monitoring marks it failed, and the next live run drops its heartbeat row
    instance.report_run_failed(instance.get_run_by_id(run.run_id), message="killed")
    assert forget_finished_heartbeats(instance) == 1 and instance.run_storage.get_cursor_values({key}) == {}
    beat(instance, run.run_id)
    forget_heartbeat(instance, run.run_id)  # what a run does at its end
    assert instance.run_storage.get_cursor_values({key}) == {}
    # an empty store misses the last catch-up bound's cycles: past windows get their live run too
    past = {r.tags[WINDOW_TAG] for r in first.run_requests} - {window}
    expected_past = {(now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)).isoformat()}
    assert past <= expected_past | {(now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)).isoformat()}


def test_a_queued_live_run_is_waited_for_not_replaced(clean_database):
    """Under the production run queue a live run can wait for a slot for minutes: it is not dead."""
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from resources import clock

    later = datetime.now(timezone.utc) + timedelta(minutes=10)  # the sensor looks 10 minutes after the launch
    window = later.replace(minute=0, second=0, microsecond=0).isoformat()
    spec = replace(SPEC, start=later.replace(minute=0, second=0, microsecond=0) - timedelta(hours=3))
    defs = build_definitions(spec=spec, automation_running=True)
    instance = dg.DagsterInstance.ephemeral()
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin

    # as the run coordinator queues it: with its code location's origin
    origin = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin(SLUG), "__repository__").get_job_origin(
        f"{SLUG}__live_job")
    create_run_for_test(instance, job_name=f"{SLUG}__live_job", status=dg.DagsterRunStatus.QUEUED,
                        tags={WINDOW_TAG: window, "crunch/competition": SLUG}, remote_job_origin=origin)

    with clock.use_clock(clock.TestClock(later)):
        result = _sensor(defs).evaluate_tick(dg.build_sensor_context(instance=instance, resources=defs.resources,
                                                                     definitions=defs))
    assert not [r for r in result.run_requests if r.tags[WINDOW_TAG] == window]


def test_a_long_catch_up_logs_progress_every_few_seconds(monkeypatch):
    """A tick that runs many cycles (a catch-up, slow models) logs as it goes: the UI shows each step
    and the cycle sensor, which reads the run's newest event, does not take it for dead."""
    from types import SimpleNamespace

    from crunch_assets.defs.live_window import window as live

    clock = [1000.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: clock[0])
    logged = []
    window = live.LiveWindow.__new__(live.LiveWindow)
    beats = []
    window.log, window.last_progress, window.beat = SimpleNamespace(info=logged.append), clock[0], lambda: beats.append(clock[0])
    start = datetime(2026, 12, 1, 10, tzinfo=timezone.utc)
    for minute in range(40):  # 40 cycles of 1.5 s each
        clock[0] += 1.5
        window.cycle_progress(start + timedelta(minutes=minute), minute + 1, 40)
    assert len(logged) == 5 and logged[0] == "catching up: cycle 2026-12-01T10:06:00+00:00 run (7 of 40)"
    assert len(beats) == 5  # the heartbeat is stamped with each progress line: a long catch-up is not a dead run
    assert live.PROGRESS_EVERY_SECONDS * 3 < live.stale_after_seconds(_fast_spec(start))


def test_a_heartbeat_the_database_refuses_is_logged_not_fatal():
    """The database restarting under a live run must not end the run: the stamp is retried at the next wake-up."""
    from types import SimpleNamespace

    import sqlalchemy.exc

    from crunch_assets.defs.live_window.window import beat

    def refuse(pairs):
        raise sqlalchemy.exc.OperationalError("UPDATE kvs", {}, Exception("server closed the connection"))

    warnings = []
    instance = SimpleNamespace(run_storage=SimpleNamespace(set_cursor_values=refuse))
    beat(instance, "run-1", SimpleNamespace(warning=warnings.append))
    assert len(warnings) == 1 and warnings[0].startswith("heartbeat not stamped: OperationalError")


# --- a feed that trickles its answers ------------------------------------------------------------


class _ShiftedWallClock:
    """The wall clock moved by a fixed offset into an hour with room for the run: real time passes
    (the trickles are real slowness, cut by real deadlines), no test waits for the next hour. The
    store stamps created_at with the database's (wall) time: `of_wall` gives it on this clock."""

    def __init__(self, at: datetime):
        self.offset = at - datetime.now(timezone.utc)

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset

    def sleep(self, seconds: float) -> None:
        import time

        time.sleep(seconds)

    def of_wall(self, wall: datetime) -> datetime:
        return wall + self.offset


# a past hour (Dagster lists partitions up to the wall time), two minutes in: the run and its catch-up
# fit, whatever the wall time
TRICKLE_WINDOW = datetime(2026, 11, 5, 13, tzinfo=timezone.utc)


def _binance_live(window, tmp_path, server, **spec_overrides):
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from crunch_assets.spec import Scope
    from resources.feeds.binance import BinanceFeed
    from resources.model_runners.local import LocalModelRunner
    from tests.rewards_fixtures import write_models

    # a cycle every 30 s on real 1-minute candles (the entry candle is at most 30 s old)
    spec = replace(SPEC, start=window, scopes=(Scope("BTC", 60, 30),), history_seconds=120, **spec_overrides)
    feed = BinanceFeed(base_url=server.url, response_timeout_seconds=1.0, read_timeout_seconds=5.0, max_total_seconds=8.0,
                       backoff_base_seconds=0.01, backoff_max_seconds=0.05)
    runner = LocalModelRunner(models_dir=str(write_models(tmp_path / "models", ["coin", "oracle"])), call_timeout_seconds=5.0)
    return spec, build_definitions(spec=spec, feed=feed, model_runner=runner, automation_running=False)


def _live_series(window):
    from tests.fakes.feed_servers import subject_series

    return {"BTCUSDT": subject_series("BTC", start_ts=int((window - timedelta(hours=1)).timestamp()), count=3 * 60)}


def _run_live(defs, window, stop, clock):
    instance = dg.DagsterInstance.ephemeral()
    with use_clock(clock):
        result = defs.get_job_def(f"{SLUG}__live_job").execute_in_process(
            run_config={"ops": {f"{SLUG}__live_window": {"config": {"window_start": window.isoformat(), "stop_at": stop.isoformat()}}}},
            instance=instance, resources=defs.resources,
        )
    started = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_START)[0].timestamp
    return result, clock.of_wall(datetime.fromtimestamp(started, tz=timezone.utc))


def test_a_feed_trickling_every_other_answer_delays_no_live_cycle(clean_database, tmp_path):
    """Every second answer of the feed trickles (a byte a second; a one-minute page is ~200 bytes).
    Before, the trickled fetch blocked until the live wait (10 s) gave up, and its cycle waited for
    the next tick, 30 s on. Now the response deadline (1 s) cuts it, the retry answers, and every
    cycle is stored within the live feed wait of its due time."""
    from tests.fakes.feed_servers import FakeBinanceServer

    window = TRICKLE_WINDOW
    clock = _ShiftedWallClock(window + timedelta(minutes=2, seconds=3))
    with FakeBinanceServer(_live_series(window)) as binance:
        binance.trickle_every(2, seconds_per_byte=1.0)  # every fetch after the first meets one trickle
        spec, defs = _binance_live(window, tmp_path, binance)
        # a minute's close (when a cycle needs a new candle, so its tick asks the feed) well inside the run
        minute = (clock.now() + timedelta(seconds=80)).replace(second=0, microsecond=0)
        stop = minute + timedelta(seconds=5)
        result, started = _run_live(defs, window, stop, clock)
        trickled = binance.trickled
    assert result.success
    with engine_for().connect() as connection:
        stored = connection.execute(sa.text(
            "SELECT cycle_at, min(created_at) FROM crunch.predictions GROUP BY 1 ORDER BY 1")).fetchall()
    assert [c for c, _ in stored] == [c for c, _ in spec.cycle_times(window, stop)]  # every due cycle
    live = [(cycle_at, clock.of_wall(created) - cycle_at) for cycle_at, created in stored
            if cycle_at >= started + timedelta(seconds=5)]
    # a cycle at a minute's close fetched that minute's candle: its fetch met a trickling answer, cut at 1 s
    closes = [(cycle_at, lag) for cycle_at, lag in live if cycle_at.second == 0]
    assert closes and all(lag >= timedelta(seconds=1) for _, lag in closes), (started, live)
    assert trickled >= len(closes)
    late = [(c.isoformat(), lag.total_seconds()) for c, lag in live if lag >= timedelta(seconds=spec.live_feed_wait_seconds)]
    assert late == []  # every cycle was stored within the live feed wait of its due time
    feed = next(m for m in result.asset_materializations_for_node(f"{SLUG}__live_window")
                if m.asset_key.path[-1] == "feed_records").metadata
    assert feed["feed_errors"].value == {}  # each cut attempt was retried within the fetch


def test_a_feed_trickling_forever_holds_no_tick_beyond_the_feed_wait(clean_database, tmp_path):
    """Every answer trickles: each tick gives up on the feed within the live feed wait (the fetch
    itself ends there, no thread goes on reading), the failure is reported, the cycles wait for
    their feed as the policy says, and the run ends on time."""
    import math
    import threading
    import time

    from tests.fakes.feed_servers import FakeBinanceServer

    window = TRICKLE_WINDOW
    clock = _ShiftedWallClock(window + timedelta(minutes=2, seconds=3))
    with FakeBinanceServer(_live_series(window)) as binance:
        binance.trickle_next(math.inf, seconds_per_byte=1.0)
        spec, defs = _binance_live(window, tmp_path, binance, live_feed_wait_seconds=3)
        stop = clock.now() + timedelta(seconds=20)
        earlier = set(threading.enumerate())
        began = time.monotonic()
        result, _ = _run_live(defs, window, stop, clock)
        ended_after_stop = clock.now() - stop
        fetchers = [thread for thread in set(threading.enumerate()) - earlier if thread.name == "feed-fetch"]
        for thread in fetchers:
            thread.join(timeout=2.0)
        assert not [thread for thread in fetchers if thread.is_alive()]  # no fetch outlived its tick
    assert result.success and time.monotonic() - began < 60
    assert ended_after_stop < timedelta(seconds=spec.live_feed_wait_seconds + 5)  # the last tick was bounded too
    events = {m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node(f"{SLUG}__live_window")}
    assert "no complete response within" in events["feed_records"]["feed_errors"].value["BTC"]
    assert events["predictions"]["cycles_waiting_for_feed"].value > 0
    with engine_for().connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM crunch.predictions")).scalar() == 0
