"""The checkpoint sensor's decision (decide_checkpoints) as a plain function of period facts."""

from dataclasses import replace
from datetime import timedelta

from crunch_assets.defs.checkpoints.sensor import CheckpointFacts, PeriodFacts, decide_checkpoints, ready_before
from crunch_assets.partitions import build_partitions
from tests.sensor_facts import PARTITIONS, SPEC, START, at

FP = {"scores": 600, "last_score_id": 41, "voided_cycles": 2, "copy_resolution_id": None}


def settled(key="2026-11-09-00:00", start=at(9), **more) -> PeriodFacts:
    facts = dict(key=key, start=start, end=start + timedelta(days=7), fingerprint=FP, summarised=600,
                 rules_fingerprint="r" * 64, rules_schedule="s" * 64)
    return PeriodFacts(**{**facts, **more})


def built_meta(period: PeriodFacts) -> dict:
    return {"fingerprint": period.fingerprint, "previous_chained_root": period.previous_root,
            "rules_fingerprint": period.rules_fingerprint, "rules_schedule": period.rules_schedule}


def decide(*periods, now=at(30), spec=SPEC, partitions=PARTITIONS):
    return decide_checkpoints(spec, partitions, CheckpointFacts(now, START, periods))


def test_no_cycles_no_checkpoint():
    decision = decide_checkpoints(SPEC, PARTITIONS, CheckpointFacts(at(28), None))
    assert not decision.requests and decision.skip_reason == "no cycles yet"


def test_a_settled_rolled_up_period_is_requested_with_a_key_of_everything_it_depends_on():
    decision = decide(settled())
    assert [r.partition_key for r in decision.requests] == ["2026-11-09-00:00"]
    assert decision.requests[0].run_key == (
        f"btc_updown:checkpoint:2026-11-09-00:00:600:41:2:None::{'r' * 16}:{'s' * 16}")
    assert decision.why == ("2026-11-09-00:00: closed and settled",)
    assert decision.added_partition_keys == ()  # weekly periods are a time-window definition


def test_a_period_that_waits_holds_back_every_later_one():
    unsettled = settled(unsettled=3)
    later = settled("2026-11-16-00:00", at(16))
    decision = decide(unsettled, later)
    assert not decision.requests and decision.skip_reason == "2026-11-09-00:00: 3 unsettled, 600 scores vs 600 summarised"
    not_rolled_up = settled(summarised=540)
    assert "600 scores vs 540 summarised" in decide(not_rolled_up, later).skip_reason


def test_paid_periods_are_passed_over_and_one_period_is_requested_per_tick():
    read = []

    def periods():  # the wrapper reads each period's facts only when the decision asks
        for period in (settled(status="PAID"), settled("2026-11-16-00:00", at(16)), settled("2026-11-23-00:00", at(23))):
            read.append(period.key)
            yield period

    decision = decide_checkpoints(SPEC, PARTITIONS, CheckpointFacts(at(28), START, periods()))
    assert [r.partition_key for r in decision.requests] == ["2026-11-16-00:00"]
    assert read == ["2026-11-09-00:00", "2026-11-16-00:00"]  # the next one chains to this one's root: not read


def test_a_current_pending_checkpoint_is_left_and_one_whose_data_or_rules_changed_is_rebuilt():
    period = settled(previous_root="ab" * 32)
    current = replace(period, status="PENDING", meta=built_meta(period))
    assert not decide(current).requests
    assert decide(current).skip_reason == "every closed period is checkpointed and current"
    for changed in (replace(current, fingerprint={**FP, "last_score_id": 42}),  # a score rewritten
                    replace(current, previous_root="cd" * 32),  # the previous checkpoint was rebuilt
                    replace(current, rules_fingerprint="t" * 64),  # a deployment changed the rules
                    replace(current, rules_schedule="u" * 64)):
        decision = decide(changed)
        assert [r.partition_key for r in decision.requests] == ["2026-11-09-00:00"]
        assert decision.why == ("2026-11-09-00:00: rebuilt, its data or rules changed",)


def test_a_period_without_scores_is_not_built():
    assert not decide(settled(fingerprint={**FP, "scores": 0}, summarised=0)).requests


def test_dynamic_periods_are_added_as_they_are_requested():
    spec = replace(SPEC, checkpoint_interval_seconds=5 * 3600)  # not a cron: dynamic partitions
    partitions = build_partitions(spec)
    period = settled("2026-11-03-00:00", START, end=START + timedelta(hours=5))
    decision = decide(period, spec=spec, partitions=partitions)
    assert decision.added_partition_keys == ("2026-11-03-00:00",)
    assert decision.sensor_result(partitions.checkpoint.definition).dynamic_partitions_requests[0].partition_keys == [
        "2026-11-03-00:00"]


def test_a_period_is_ready_once_its_last_cycle_has_resolved_and_settled():
    """The period's last cycle (its end less a minute) resolves a horizon later, and is scored a
    settle delay after that: the period is ready only then."""
    spec = replace(SPEC, settle_delay_seconds=30)
    end = at(16)  # the first whole week's (periods are weeks from Monday)
    assert ready_before(spec, end + timedelta(seconds=90)) == end
    assert PARTITIONS.checkpoint.periods_between(START, ready_before(spec, end + timedelta(seconds=89))) == []
    assert [k for k, _, _ in PARTITIONS.checkpoint.periods_between(START, ready_before(spec, end + timedelta(seconds=90)))
            ] == ["2026-11-09-00:00"]
