"""The rollup sensor's and the daily rollup schedule's decisions as plain functions."""

from datetime import timedelta

from crunch_assets.defs.rollups.schedule import decide_daily_rollup
from crunch_assets.defs.rollups.sensor import RollupFacts, decide_rollups
from tests.sensor_facts import KEYS, PARTITIONS, SPEC, START, at


def decide(facts):
    return decide_rollups(SPEC, PARTITIONS, KEYS, facts)


def days(decision):
    return [r.partition_key for r in decision.requests]


def test_an_unmoved_marker_rolls_nothing_up():
    decision = decide(RollupFacts(at(22, 9), "120:3", "120:3"))
    assert not decision.requests and decision.skip_reason == "no new scores or voided cycles"


def test_new_scores_roll_up_every_day_they_span_as_of_now_or_the_days_end():
    now = at(22, 9, 30, 40)
    decision = decide(RollupFacts(now, "500:0", "120:0", False, at(20, 23, 58), at(22, 0, 1)))
    assert days(decision) == ["2026-11-20", "2026-11-21", "2026-11-22"]
    as_of = [r.run_config["ops"][KEYS.op("snapshots")]["config"]["as_of"] for r in decision.requests]
    assert as_of == [at(21).isoformat(), at(22).isoformat(), at(22, 9, 30).isoformat()]  # a past day: its end
    assert decision.requests[0].run_key == "btc_updown:rollup:2026-11-20:500:0"
    assert decision.cursor == "500:0" and decision.why == (
        "2026-11-20: new scores", "2026-11-21: new scores", "2026-11-22: new scores")


def test_a_live_run_rolls_up_its_own_last_hours():
    now = at(22, 9, 30)
    recent = RollupFacts(now, "500:0", "120:0", True, at(22, 7, 0), at(22, 9, 29))
    assert not decide(recent).requests and decide(recent).cursor == "500:0"
    older = RollupFacts(now, "500:0", "120:0", True, at(22, 6, 59), at(22, 9, 29))  # a backfill's hour
    assert days(decide(older)) == ["2026-11-22"]


def test_voided_cycles_roll_up_their_days_even_under_a_live_run():
    now = at(22, 9, 30)
    decision = decide(RollupFacts(now, "500:4", "500:3", True, None, None, (at(19), at(22))))
    assert days(decision) == ["2026-11-19", "2026-11-22"]
    assert decision.why == ("2026-11-19: voided cycles", "2026-11-22: voided cycles")
    # the voids did not move: their days are not rolled up again (the facts are not even read)
    assert not decide(RollupFacts(now, "501:4", "500:4", True, None, None, (at(19),))).requests


def test_a_day_after_now_is_not_rolled_up():
    now = at(22, 23, 59)
    decision = decide(RollupFacts(now, "9:0", "1:0", False, at(22, 23, 58), at(23, 0, 0, 30)))
    assert days(decision) == ["2026-11-22"]  # a cycle stamped past midnight waits for its day


def test_the_daily_schedule_finalises_yesterday_from_the_first_day_on():
    decision = decide_daily_rollup(SPEC, PARTITIONS, at(10, 0, 15))
    assert [r.partition_key for r in decision.requests] == ["2026-11-09"]
    assert decide_daily_rollup(SPEC, PARTITIONS, START + timedelta(days=1, minutes=15)).requests
    skipped = decide_daily_rollup(SPEC, PARTITIONS, START + timedelta(minutes=15))
    assert not skipped.requests and "had not started" in skipped.skip_reason
