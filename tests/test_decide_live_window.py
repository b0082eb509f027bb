"""The live window's decisions as plain functions: which live runs are alive (liveness) and which
windows the cycle sensor launches (decide_cycles). No Dagster instance, no database, no clock."""

from dataclasses import replace
from datetime import timedelta

import dagster as dg

from crunch_assets.defs.live_window.liveness import LiveRunRecord, Liveness, liveness
from crunch_assets.defs.live_window.sensor import FILL_GRACE_SECONDS, CycleFacts, cycles_to_fill, decide_cycles
from tests.sensor_facts import SPEC, START, at

S = dg.DagsterRunStatus
STALE = timedelta(seconds=75)


def run(window, run_id, status, created, **more) -> LiveRunRecord:
    return LiveRunRecord(window=window.isoformat(), run_id=run_id, status=status, created=created, **more)


def all_stored(now):
    return frozenset((c, scope.key) for c, scope in cycles_to_fill(SPEC, now))


def windows(decision):
    return [(r.tags["crunch/live_window"], r.tags["crunch/launched_because"]) for r in decision.requests]


# --- liveness ----------------------------------------------------------------------------------

def test_a_started_run_that_still_heartbeats_is_alive_and_one_that_died_is_not():
    now, window = at(22, 9, 30), at(22, 9)
    beating = run(window, "a", S.STARTED, at(22, 8, 59), started=at(22, 8, 59), last_sign=now - timedelta(seconds=20))
    died = run(window, "b", S.STARTED, at(22, 8, 59), started=at(22, 8, 59), last_sign=now - timedelta(seconds=76))
    assert liveness([beating], now, STALE).is_alive(window)
    # killed (machine lost, OOM): Dagster still says STARTED, but nothing stamped for longer than stale_after
    assert not liveness([died], now, STALE).is_alive(window)


def test_a_started_run_without_a_heartbeat_is_judged_by_its_start():
    now, window = at(22, 9, 30), at(22, 9)
    assert liveness([run(window, "a", S.STARTED, now - timedelta(minutes=5), started=now - timedelta(seconds=10))],
                    now, STALE).is_alive(window)
    assert not liveness([run(window, "a", S.STARTED, now - timedelta(minutes=5), started=now - timedelta(minutes=2))],
                        now, STALE).is_alive(window)


def test_queued_runs_wait_launched_ones_get_two_minutes_canceling_and_finished_are_dead():
    now, window = at(22, 9, 30), at(22, 9)
    long_ago = now - timedelta(minutes=30)
    assert liveness([run(window, "q", S.QUEUED, long_ago)], now, STALE).is_alive(window)
    assert liveness([run(window, "n", S.NOT_STARTED, now - timedelta(seconds=100))], now, STALE).is_alive(window)
    assert not liveness([run(window, "n", S.NOT_STARTED, now - timedelta(seconds=121))], now, STALE).is_alive(window)
    for status in (S.CANCELING, S.CANCELED, S.FAILURE, S.SUCCESS):
        assert not liveness([run(window, "x", status, now - timedelta(seconds=1))], now, STALE).is_alive(window)


def test_the_newest_run_names_the_window_and_any_alive_run_keeps_it_alive():
    now, window = at(22, 9, 30), at(22, 9)
    newest = run(window, "new", S.FAILURE, now - timedelta(minutes=1), ended=now - timedelta(seconds=30))
    older = run(window, "old", S.QUEUED, now - timedelta(minutes=10))
    seen = liveness([newest, older], now, STALE)  # newest first, as the run records come
    assert seen.newest == {window.isoformat(): "new"}
    assert seen.ended == {window.isoformat(): now - timedelta(seconds=30)}
    assert seen.is_alive(window)


# --- the cycle sensor ------------------------------------------------------------------------------

def test_nothing_before_the_start_less_the_lead():
    decision = decide_cycles(SPEC, CycleFacts(START - timedelta(seconds=31), Liveness()))
    assert not decision.requests and "starts at" in decision.skip_reason


def test_the_current_window_gets_a_run_when_none_is_alive_and_none_when_one_is():
    now = at(22, 9, 30)
    launched = decide_cycles(SPEC, CycleFacts(now, Liveness(), all_stored(now)))
    assert windows(launched) == [(at(22, 9).isoformat(), "current window")]
    assert launched.why == ("current window",)
    assert launched.requests[0].run_key == f"btc_updown:live:{at(22, 9).isoformat()}:after:none"
    alive = decide_cycles(SPEC, CycleFacts(now, Liveness(alive={at(22, 9).isoformat(): True}), all_stored(now)))
    assert not alive.requests and "alive; nothing missing" in alive.skip_reason


def test_a_run_that_died_is_replaced_under_a_new_run_key():
    now, window = at(22, 9, 30), at(22, 9)
    dead = liveness([run(window, "dead-run", S.STARTED, at(22, 8, 59), started=at(22, 8, 59),
                         last_sign=now - timedelta(minutes=3))], now, STALE)
    decision = decide_cycles(SPEC, CycleFacts(now, dead, all_stored(now)))
    # a replacement is keyed by the run it replaces: never deduplicated away as the first run's twin
    assert [r.run_key for r in decision.requests] == [f"btc_updown:live:{window.isoformat()}:after:dead-run"]
    assert decision.requests[0].run_config == {"ops": {"btc_updown__live_window": {"config": {"window_start": window.isoformat()}}}}


def test_at_the_hour_boundary_the_next_window_is_launched_at_least_the_lead_early_whatever_the_tick_phase():
    """The sensor ticks every cycle_sensor_interval_seconds: the next hour's run is launched by the
    last tick that comes before the lead, not by the first one inside it (which could come up to
    an interval late: a run launched 8 s before the hour with a 30 s lead)."""
    alive_now = Liveness(alive={at(22, 9).isoformat(): True})
    lead = timedelta(seconds=SPEC.cycle_lead_seconds)
    interval = timedelta(seconds=SPEC.cycle_sensor_interval_seconds)
    earliest = at(22, 10) - lead - interval
    for offset_seconds in range(0, int(interval.total_seconds()) + 1, 5):
        # a tick at any phase: if the tick before the lead did not launch, this one must not be later than the lead
        tick = earliest + timedelta(seconds=offset_seconds)
        launched = windows(decide_cycles(SPEC, CycleFacts(tick, alive_now, all_stored(tick))))
        assert launched == [(at(22, 10).isoformat(), "next window, launched early")], tick
    sooner = earliest - timedelta(seconds=1)
    assert not decide_cycles(SPEC, CycleFacts(sooner, alive_now, all_stored(sooner))).requests
    # ticks every interval, starting anywhere: the first one that launches leaves at least the lead
    for phase_seconds in range(int(interval.total_seconds())):
        ticks = [at(22, 9, 50) + timedelta(seconds=phase_seconds) + k * interval for k in range(40)]
        first = next(t for t in ticks if decide_cycles(SPEC, CycleFacts(t, alive_now, all_stored(t))).requests)
        assert lead <= at(22, 10) - first <= lead + interval, (phase_seconds, first)
    # the hour itself: the new window is current now, the old one's is not asked for
    past = Liveness(alive={at(22, 9).isoformat(): True})
    assert windows(decide_cycles(SPEC, CycleFacts(at(22, 10), past, all_stored(at(22, 10))))) == [
        (at(22, 10).isoformat(), "current window")]


def test_the_last_cycle_of_an_hour_missed_gets_a_run_of_that_past_window():
    """A run killed at hh:59 leaves hh:59 missing: the next run belongs to the next hour."""
    now = at(22, 10, 1, 5)
    stored = all_stored(now) - {(at(22, 9, 59), SPEC.scopes[0].key)}
    alive_now = Liveness(alive={at(22, 10).isoformat(): True})
    assert windows(decide_cycles(SPEC, CycleFacts(now, alive_now, stored))) == [
        (at(22, 9).isoformat(), "missed cycles in a past window")]


def test_a_past_window_whose_run_ended_under_a_minute_ago_or_is_alive_is_not_refilled():
    now = at(22, 10, 1, 5)
    stored = all_stored(now) - {(at(22, 9, 59), SPEC.scopes[0].key)}
    just_ended = Liveness(alive={at(22, 10).isoformat(): True}, newest={at(22, 9).isoformat(): "r9"},
                          ended={at(22, 9).isoformat(): now - timedelta(seconds=30)})
    assert not decide_cycles(SPEC, CycleFacts(now, just_ended, stored)).requests
    ended_long_ago = replace(just_ended, ended={at(22, 9).isoformat(): now - timedelta(seconds=61)})
    refill = decide_cycles(SPEC, CycleFacts(now, ended_long_ago, stored))
    assert [r.run_key for r in refill.requests] == [f"btc_updown:live:{at(22, 9).isoformat()}:after:r9"]
    still_running = Liveness(alive={at(22, 10).isoformat(): True, at(22, 9).isoformat(): True})
    assert not decide_cycles(SPEC, CycleFacts(now, still_running, stored)).requests


def test_only_cycles_inside_the_catch_up_bound_and_past_the_grace_are_filled():
    now = at(22, 10, 30)
    expected = cycles_to_fill(SPEC, now)
    # max_catchup_seconds (15 min) back, up to the current hour: nothing of 10:xx, nothing before 10:15
    assert expected == []
    now = at(22, 10, 5)
    cycles = [c for c, _ in cycles_to_fill(SPEC, now)]
    assert cycles[0] == at(22, 9, 50) and cycles[-1] == at(22, 9, 59)
    now = at(22, 10, 0, FILL_GRACE_SECONDS - 1)  # the 09:59 cycle's run may still be storing it
    assert all(c < now - timedelta(seconds=FILL_GRACE_SECONDS) for c, _ in cycles_to_fill(SPEC, now))
    old_gap = frozenset()  # nothing stored at all, but 09:40 is past the catch-up bound
    past = decide_cycles(SPEC, CycleFacts(at(22, 10, 5), Liveness(alive={at(22, 10).isoformat(): True}), old_gap))
    assert windows(past) == [(at(22, 9).isoformat(), "missed cycles in a past window")]
