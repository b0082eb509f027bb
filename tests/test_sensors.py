"""Sensors evaluated with build_sensor_context against the real store."""

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from crunch_assets.keys import ChainKeys
from crunch_assets.run_config import as_of_run_config
from crunch_assets.replay import chain_assets

START = datetime(2026, 11, 3, tzinfo=timezone.utc)


@pytest.fixture
def competition(clean_database):
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from resources.feeds.synthetic import SyntheticFeed

    spec = replace(SPEC, start=START)
    defs = build_definitions(spec=spec, feed=SyntheticFeed(), automation_running=True)
    return spec, defs


def _sensor(defs, name):
    return next(s for s in defs.sensors if s.name == name)


def _evaluate(defs, name, cursor=None, instance=None):
    context = dg.build_sensor_context(
        cursor=cursor, resources=defs.resources, instance=instance or dg.DagsterInstance.ephemeral(), definitions=defs
    )
    return _sensor(defs, name).evaluate_tick(context)


def test_sensors_and_schedule_start_running_in_the_demo(competition):
    _, defs = competition
    assert {s.default_status for s in defs.sensors} == {dg.DefaultSensorStatus.RUNNING}
    assert {s.default_status for s in defs.schedules} == {dg.DefaultScheduleStatus.RUNNING}


def _windows(result):
    return sorted(r.tags["crunch/live_window"] for r in result.run_requests)


def test_cycle_sensor_fills_a_missed_last_cycle_of_an_hour(competition):
    """Issue: a cycle run killed at hh:59 left the hour's last cycle missing for good: the next run
    belongs to the next hour. Missed cycles of a past window inside the catch-up bound get a live
    run of that window, which runs them and exits."""
    from resources import clock

    spec, defs = competition
    keys = ChainKeys.for_slug(spec.slug)
    hour = datetime(2026, 11, 22, 9, tzinfo=timezone.utc)
    cycle_ops = [ChainKeys.op_name(keys.feed_records), ChainKeys.op_name(keys.predictions)]
    # 09:00 .. 09:58 were stored; the run died before storing 09:59
    dg.materialize(chain_assets(defs, [keys.feed_records, keys.predictions]), resources=defs.resources,
                   partition_key="2026-11-22-09:00", run_config=as_of_run_config(cycle_ops, hour + timedelta(minutes=58)))
    now = hour + timedelta(hours=1, minutes=1, seconds=5)
    with clock.use_clock(clock.TestClock(now)):
        result = _evaluate(defs, "btc_updown__cycle_sensor")
    assert _windows(result) == [hour.isoformat(), (hour + timedelta(hours=1)).isoformat()]  # the past one, the current one
    fill = next(r for r in result.run_requests if r.tags["crunch/live_window"] == hour.isoformat())
    assert fill.tags["crunch/launched_because"] == "missed cycles in a past window"
    live = defs.get_job_def("btc_updown__live_job")
    assert live.execute_in_process(run_config=fill.run_config, resources=defs.resources).success
    from resources.store.competition import CompetitionStore
    from resources.store.database import engine_for

    assert len(CompetitionStore(engine_for(), spec.slug).stored_cycles(hour, hour + timedelta(hours=1))) == 60


def test_cycle_sensor_launches_the_next_window_early_but_not_sooner(competition):
    from resources import clock

    spec, defs = competition
    hour = datetime(2026, 11, 22, 10, tzinfo=timezone.utc)
    with clock.use_clock(clock.TestClock(hour - timedelta(seconds=spec.cycle_lead_seconds - 5))):
        early = _evaluate(defs, "btc_updown__cycle_sensor")
    with clock.use_clock(clock.TestClock(hour - timedelta(seconds=spec.cycle_lead_seconds + 60))):
        sooner = _evaluate(defs, "btc_updown__cycle_sensor")
    assert hour.isoformat() in _windows(early)  # its process boots before the hour begins
    assert hour.isoformat() not in _windows(sooner)


def test_settlement_and_rollup_sensors_follow_the_store(competition):
    spec, defs = competition
    keys = ChainKeys.for_slug(spec.slug)
    partition = "2026-11-03-00:00"
    assert _evaluate(defs, "btc_updown__settlement_sensor").skip_message  # no feed yet
    as_of = START + timedelta(minutes=9)
    dg.materialize(chain_assets(defs, [keys.feed_records, keys.predictions]), resources=defs.resources,
                   partition_key=partition,
                   run_config=as_of_run_config([ChainKeys.op_name(keys.feed_records), ChainKeys.op_name(keys.predictions)], as_of))
    settle = _evaluate(defs, "btc_updown__settlement_sensor")
    # the feed is fetched up to 00:09, so the cycles 00:00 .. 00:08 (resolving by 00:09) are settled
    assert [(r.partition_key, r.run_key.split(":")[1]) for r in settle.run_requests] == [(partition, "scores")]
    scores_op = ChainKeys.op_name(keys.scores)
    assert settle.run_requests[0].run_config["ops"][scores_op]["config"]["as_of"] == as_of.isoformat()
    assert _evaluate(defs, "btc_updown__rollup_sensor").skip_message  # no scores yet
    scored = dg.materialize(chain_assets(defs, [keys.scores]), resources=defs.resources, partition_key=partition,
                            run_config=settle.run_requests[0].run_config)
    metadata = scored.asset_materializations_for_node(scores_op)[0].metadata
    assert metadata["scored"].value == 27 and metadata["cycles_voided"].value == 0 and metadata["still_unscored"].value == 3
    # the 00:09 cycle waits for a price that never came and is long past its void deadline
    again = _evaluate(defs, "btc_updown__settlement_sensor", cursor=settle.cursor)
    assert [(r.partition_key, r.run_key.split(":")[1]) for r in again.run_requests] == [(partition, "void")]
    voided = dg.materialize(chain_assets(defs, [keys.scores]), resources=defs.resources, partition_key=partition,
                            run_config=again.run_requests[0].run_config)
    metadata = voided.asset_materializations_for_node(scores_op)[0].metadata
    assert metadata["cycles_voided"].value == 1 and metadata["still_unscored"].value == 0
    assert "the clock passed" in metadata["void_reasons"].value[0]
    rollup = _evaluate(defs, "btc_updown__rollup_sensor")
    assert [r.partition_key for r in rollup.run_requests] == ["2026-11-03"]
    assert _evaluate(defs, "btc_updown__rollup_sensor", cursor=rollup.cursor).skip_message


def test_checkpoint_sensor_waits_for_a_settled_period(competition):
    spec, defs = competition
    result = _evaluate(defs, "btc_updown__checkpoint_sensor")
    # weekly periods since 2026-11-03 have closed, but none has snapshots: nothing is requested
    assert not result.run_requests


def test_checkpoint_sensor_requests_a_settled_period_once_rolled_up(clean_database):
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from resources.feeds.synthetic import SyntheticFeed

    spec = replace(SPEC, start=START, checkpoint_interval_seconds=6 * 3600)
    defs = build_definitions(spec=spec, feed=SyntheticFeed(), automation_running=True)
    keys = ChainKeys.for_slug(spec.slug)
    # predictions and scores for 00:00-06:00 (after the feed they resolve with), but no snapshots yet
    partitions = [f"2026-11-03-0{h}:00" for h in range(6)]
    for partition in partitions + ["2026-11-03-06:00"]:
        dg.materialize(chain_assets(defs, [keys.feed_records]), resources=defs.resources, partition_key=partition)
    for partition in partitions:
        dg.materialize(chain_assets(defs, [keys.predictions, keys.scores]), resources=defs.resources,
                       partition_key=partition)
    waiting = _evaluate(defs, "btc_updown__checkpoint_sensor")
    assert not waiting.run_requests and "summarised" in waiting.skip_message
    dg.materialize(chain_assets(defs, [keys.snapshots]), resources=defs.resources, partition_key="2026-11-03")
    ready = _evaluate(defs, "btc_updown__checkpoint_sensor")
    assert [r.partition_key for r in ready.run_requests] == ["2026-11-03-00:00"]


def test_daily_rollup_schedule_finalises_yesterday(competition):
    spec, defs = competition
    schedule = next(s for s in defs.schedules if s.name == "btc_updown__daily_rollup_schedule")
    tick = datetime(2026, 11, 10, 0, 15, tzinfo=timezone.utc)
    result = schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=tick, repository_def=defs.get_repository_def()))
    assert [r.partition_key for r in result.run_requests] == ["2026-11-09"]
    before_start = datetime(2026, 11, 3, 0, 15, tzinfo=timezone.utc)  # the day before is before the start
    skipped = schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=before_start, repository_def=defs.get_repository_def()))
    assert not skipped.run_requests and "had not started" in skipped.skip_message
