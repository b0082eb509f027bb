"""The settlement sensor's decision (decide_settlement) as a plain function of store facts and now."""

from dataclasses import replace
from datetime import timedelta

from crunch_assets.defs.scores.sensor import SettlementFacts, decide_settlement, live_settles_from, settled_until
from tests.sensor_facts import KEYS, PARTITIONS, SPEC, at

SCORES_OP = KEYS.op("scores")


def decide(facts, spec=SPEC):
    return decide_settlement(spec, PARTITIONS, KEYS, facts)


def kinds(decision):
    return [(r.partition_key, r.run_key.split(":")[1]) for r in decision.requests]


def test_nothing_before_the_feed_is_fetched():
    decision = decide(SettlementFacts(at(22, 9), None, False))
    assert not decision.requests and decision.skip_reason == "the feed has not been fetched yet"
    assert decision.cursor is None  # the cursor stays where it was


def test_settled_hours_are_scored_as_of_what_the_feed_covers():
    now = at(22, 9, 30)
    decision = decide(SettlementFacts(now, at(22, 9, 10), False, (at(22, 8), at(22, 9))))
    assert kinds(decision) == [("2026-11-22-08:00", "scores"), ("2026-11-22-09:00", "scores")]
    assert decision.requests[0].run_config["ops"][SCORES_OP]["config"]["as_of"] == at(22, 9, 10).isoformat()
    assert decision.cursor == at(22, 9, 10).isoformat()
    assert all("settled up to" in why for why in decision.why)


def test_a_late_feed_holds_settlement_back_to_what_it_covers():
    """The feed is an hour late: nothing after its last record is settled, and the cursor says so."""
    now = at(22, 9, 30)
    late = at(22, 8, 30)
    assert settled_until(SPEC, now, late) == late
    decision = decide(SettlementFacts(now, late, False, (at(22, 8),)))
    assert decision.cursor == late.isoformat()
    assert decision.requests[0].run_key == f"btc_updown:scores:{at(22, 8).isoformat()}:{late.isoformat()}"
    # the settle delay bounds it the other way: a feed fetched to now is settled only to now - delay
    delayed = replace(SPEC, settle_delay_seconds=120)
    assert settled_until(delayed, now, now) == now - timedelta(seconds=120)
    assert decide(SettlementFacts(now, now, False, (at(22, 9),)), delayed).requests[0].run_config["ops"][SCORES_OP][
        "config"]["as_of"] == now.isoformat()  # as_of = min(now, settled_until + delay)


def test_a_live_run_of_the_current_hour_settles_its_own_hours():
    now = at(22, 9, 30)
    live_from = live_settles_from(SPEC, now)
    assert live_from == at(22, 8)  # the hour before the one its longest horizon (60 s) reaches back to
    facts = SettlementFacts(now, now, True, (at(22, 6), at(22, 7), at(22, 8)), (at(22, 5), at(22, 8)))
    assert kinds(decide(facts)) == [("2026-11-22-06:00", "scores"), ("2026-11-22-07:00", "scores"),
                                    ("2026-11-22-05:00", "void")]
    assert kinds(decide(replace(facts, live_run_alive=False))) == [
        ("2026-11-22-06:00", "scores"), ("2026-11-22-07:00", "scores"), ("2026-11-22-08:00", "scores"),
        ("2026-11-22-05:00", "void")]


def test_overdue_hours_are_voided_once_per_minute_and_not_twice_with_their_scores_run():
    now = at(22, 9, 30, 45)
    decision = decide(SettlementFacts(now, now, False, (at(22, 3),), (at(22, 3), at(22, 4))))
    assert kinds(decision) == [("2026-11-22-03:00", "scores"), ("2026-11-22-04:00", "void")]
    void = decision.requests[1]
    assert void.run_key == f"btc_updown:void:{at(22, 4).isoformat()}:{at(22, 9, 30).isoformat()}"
    assert void.run_config["ops"][SCORES_OP]["config"]["as_of"] == now.isoformat()
    assert decision.why[1].endswith("past the void deadline")


def test_nothing_newly_settled_still_moves_the_cursor():
    decision = decide(SettlementFacts(at(22, 9, 30), at(22, 9, 29), False))
    assert not decision.requests and decision.skip_reason.startswith("nothing newly settled up to")
    assert decision.cursor == at(22, 9, 29).isoformat()
