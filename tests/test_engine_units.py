"""The engine's pure parts: standings, windows, ranking, spec and wiring validation."""

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from crunch_assets.emission import tiered
from crunch_assets.rules import CallableRules, WiringError
from crunch_assets.spec import (
    CompetitionSpec,
    EmissionPolicy,
    Eligibility,
    FailurePolicy,
    LeaderboardWindow,
    Scope,
    SpecError,
)
from crunch_assets.standings import payout_order, rank_models, standings
from resources.store.rows import CycleRollupRow, SnapshotRow

T0 = datetime(2025, 1, 8, tzinfo=timezone.utc)
SCOPE = Scope("BTC", 60, 60)


def _snapshot(model, hours_before, count, mean, failure=0.0, scope="BTC-60-60"):
    start = T0 - timedelta(hours=hours_before)
    return SnapshotRow(model, scope, start, start + timedelta(hours=1), count, count * mean, count * failure,
                       status_counts={"scored": count})


def _cycles(hours_before, count, failure=0.0, scope="BTC-60-60", voided=0):
    start = T0 - timedelta(hours=hours_before)
    return CycleRollupRow(scope, start, start + timedelta(hours=1), count, voided, count * failure)


def test_a_period_mean_is_count_weighted():
    rows = [_snapshot("a", 2, 100, 0.8), _snapshot("a", 1, 50, 0.6)]
    result = standings(rows, [_cycles(2, 100), _cycles(1, 50)], [SCOPE], Eligibility(), T0 - timedelta(hours=2), T0)
    assert result["a"].value == pytest.approx(0.733333333, abs=1e-9)
    assert result["a"].predictions == 150 and result["a"].coverage == 1.0


def test_windows_are_real_time_windows():
    rows = [_snapshot("a", 30, 60, 0.2), _snapshot("a", 2, 60, 0.9)]
    cycles = [_cycles(30, 60), _cycles(2, 60)]
    recent = standings(rows, cycles, [SCOPE], Eligibility(), T0 - timedelta(days=1), T0)
    anchor = standings(rows, cycles, [SCOPE], Eligibility(), T0 - timedelta(days=7), T0)
    assert recent["a"].value == pytest.approx(0.9)
    assert anchor["a"].value == pytest.approx(0.55)


def test_a_late_joiner_is_ranked_over_every_cycle_of_the_period():
    """Issue: a model that answered 60 cycles at 0.90 beat one that answered all 10,080 cycles of
    the week at 0.76 and was paid 625,000,000. Missed cycles now count at the failure value."""
    week = [_snapshot("steady", h, 60, 0.76) for h in range(1, 169)]
    late = [_snapshot("late", 1, 60, 0.90)]
    cycles = [_cycles(h, 60) for h in range(1, 169)]
    result = standings(week + late, cycles, [SCOPE], Eligibility.every_cycle(), T0 - timedelta(days=7), T0)
    assert result["steady"].value == pytest.approx(0.76)
    assert result["late"].value == pytest.approx(0.90 * 60 / 10080)
    assert result["late"].cycles == 10080 and result["late"].coverage == pytest.approx(60 / 10080)
    assert payout_order(result, descending=True) == ["steady", "late"]


def test_missed_cycles_count_at_each_cycles_own_failure_value():
    # relative failure values differ per hour: the missed hour counts at its own value
    rows = [_snapshot("full", 2, 10, 0.5, failure=0.1), _snapshot("full", 1, 10, 0.5, failure=0.3),
            _snapshot("late", 1, 10, 0.6, failure=0.3)]
    cycles = [_cycles(2, 10, failure=0.1), _cycles(1, 10, failure=0.3)]
    result = standings(rows, cycles, [SCOPE], Eligibility(), T0 - timedelta(hours=2), T0)
    assert result["late"].value == pytest.approx((10 * 0.6 + 10 * 0.1) / 20)


def test_minimum_coverage_lists_but_does_not_make_eligible():
    rows = [_snapshot("full", h, 60, 0.5) for h in range(1, 11)] + [_snapshot("late", 1, 60, 0.9)]
    cycles = [_cycles(h, 60) for h in range(1, 11)]
    result = standings(rows, cycles, [SCOPE], Eligibility.minimum_coverage(0.5), T0 - timedelta(hours=10), T0)
    assert result["late"].value == pytest.approx(0.9)  # its own mean
    assert not result["late"].eligible and result["full"].eligible
    assert payout_order(result, descending=True) == ["full", "late"]


def test_scope_means_combine_with_the_declared_weights():
    short, long = Scope("BTC", 300, 300, weight=1.0), Scope("BTC", 900, 900, weight=3.0)
    rows = [_snapshot("a", 1, 12, 0.2, scope=short.key), _snapshot("a", 1, 4, 0.6, scope=long.key)]
    cycles = [_cycles(1, 12, scope=short.key), _cycles(1, 4, scope=long.key)]
    result = standings(rows, cycles, [short, long], Eligibility(), T0 - timedelta(hours=1), T0)
    assert result["a"].scopes[short.key].value == pytest.approx(0.2)
    assert result["a"].scopes[long.key].value == pytest.approx(0.6)
    assert result["a"].value == pytest.approx((1 * 0.2 + 3 * 0.6) / 4)


def test_ranking_breaks_ties_by_model_id_not_insertion_order():
    assert rank_models({"zeta": 0.5, "alpha": 0.5, "mid": 0.9, "none": None}) == ["mid", "alpha", "zeta", "none"]
    assert rank_models({"a": 1.0, "b": 2.0}, descending=False) == ["a", "b"]


def test_emission_rejects_tiers_over_100_percent():
    with pytest.raises(ValueError, match="exceed 100"):
        tiered(3, ((1, 90.0), (3, 10.0)))


def test_relative_failure_value_is_a_percentile_of_the_cycles_answers():
    worst = FailurePolicy.relative(100)
    assert worst.value_for([0.1, 0.5, 0.9], higher_is_better=True) == 0.1
    assert worst.value_for([0.1, 0.5, 0.9], higher_is_better=False) == 0.9  # CRPS: lower is better
    assert FailurePolicy.relative(50).value_for([0.1, 0.5, 0.9], True) == pytest.approx(0.5)
    assert FailurePolicy.relative(90).value_for([0.0, 1.0], True) == pytest.approx(0.1)
    assert worst.value_for([], True) is None
    assert FailurePolicy.constant(-1.0).value_for([], True) == -1.0


BASE_SPEC = CompetitionSpec(slug="demo", start=datetime(2025, 1, 1, tzinfo=timezone.utc), scopes=(SCOPE,),
                            failure_policy=FailurePolicy.constant(0.0))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"slug": "Bad-Slug"}, "slug"),
        ({"start": datetime(2025, 1, 1)}, "timezone-aware"),
        ({"start": datetime(2025, 1, 1, 0, 30, tzinfo=timezone.utc)}, "hour boundary"),
        ({"scopes": ()}, "at least one"),
        ({"scopes": (Scope("BTC", 60, 0),)}, "prediction_interval_seconds"),
        ({"scopes": (Scope("BTC", 8 * 86400, 60),)}, "resolve_horizon_seconds"),
        ({"scopes": (Scope("BTC", 60, 60, weight=0),)}, "weight"),
        ({"checkpoint_interval_seconds": 1000}, "whole number of hours"),
        ({"ranking_key": "score"}, "ranking_key 'score'"),
        ({"checkpoint_ranking": "score"}, "checkpoint_ranking 'score'"),
        ({"max_price_staleness_seconds": 120}, "must be smaller than scope BTC-60-60's horizon"),
        ({"failure_policy": FailurePolicy.constant(float("nan"))}, "finite"),
        ({"failure_policy": FailurePolicy.relative(101)}, "percentile"),
        ({"eligibility": Eligibility.minimum_coverage(1.5)}, "min_coverage"),
        ({"emission": EmissionPolicy.softmax(0)}, "temperature"),
        ({"emission": EmissionPolicy.tiered(((1, 50.0), (3, 40.0)))}, "> 100"),
        ({"leaderboard_windows": (LeaderboardWindow("w", 1800),)}, "whole number of hours"),
    ],
)
def test_spec_errors_name_the_field(change, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        replace(BASE_SPEC, **change)


@pytest.mark.parametrize("hours", [1, 5, 48, 7 * 24, 30 * 24])
def test_checkpoint_intervals_of_any_whole_number_of_hours(hours):
    from crunch_assets.partitions import build_partitions

    spec = replace(BASE_SPEC, checkpoint_interval_seconds=hours * 3600)
    periods = build_partitions(spec).checkpoint
    found = periods.periods_between(spec.start, spec.start + timedelta(hours=hours * 3))
    assert len(found) >= 2
    for (_, start, end), (_, next_start, _) in zip(found, found[1:]):
        assert end - start == timedelta(hours=hours) and next_start == end  # contiguous periods
    assert periods.is_dynamic == (hours in (5, 48, 30 * 24))


def test_horizons_up_to_a_week_and_intervals_not_dividing_an_hour():
    spec = replace(BASE_SPEC, scopes=(Scope("BTC", 7 * 86400, 7200), Scope("ETH", 600, 420)))
    cycles = spec.cycle_times(T0, T0 + timedelta(hours=4))
    assert [c.hour for c, s in cycles if s.subject == "BTC"] == [0, 2]
    assert all(int(c.timestamp()) % 420 == 0 for c, s in cycles if s.subject == "ETH")


def test_cycle_times_are_aligned_to_the_epoch():
    spec = replace(BASE_SPEC, scopes=(Scope("BTC", 60, 60), Scope("ETH", 300, 300)))
    cycles = spec.cycle_times(T0, T0 + timedelta(minutes=10))
    assert len([c for c in cycles if c[1].subject == "BTC"]) == 10
    assert [c.minute for c, s in cycles if s.subject == "ETH"] == [0, 5]


def test_a_cycle_at_the_end_instant_is_included_when_asked_for_up_to_it():
    # the predictions asset asks for cycles up to and including as_of (end = as_of + 1 microsecond)
    cycles = BASE_SPEC.cycle_times(T0, T0 + timedelta(minutes=2, microseconds=1))
    assert [c for c, _ in cycles] == [T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]
    assert BASE_SPEC.cycle_times(T0 + timedelta(seconds=1), T0 + timedelta(seconds=61))[0][0] == T0 + timedelta(minutes=1)


def _rules(**override):
    """btc_updown's real wiring with some slots replaced."""
    from competitions.btc_updown.definitions import RULES

    return CallableRules(**{**{name: getattr(RULES, name) for name in CallableRules.model_fields}, **override})


def needs_an_extra_parameter(entries, pool_size):
    return [1_000_000_000] + [0] * (len(entries) - 1)


def takes_extras_with_defaults(entries, pool_size=1, **rest):
    return [1_000_000_000] + [0] * (len(entries) - 1)


@pytest.mark.parametrize(
    "slot, path, message",
    [
        ("scoring_function", "competitions.btc_updown.logic:brier_skil", "scoring_function: module .* has no attribute 'brier_skil'"),
        ("input_builder", "competitions.btc_updown.logik:build_inference_input", "input_builder: cannot import module"),
        ("emission_builder", "competitions.btc_updown.logic.build_emission", "emission_builder: .* not an import path"),
        ("output_validator", "competitions.btc_updown.logic:MAX_MIXTURE_COMPONENTS", "output_validator: .* not callable"),
        ("ground_truth_resolver", "competitions.btc_updown.logic:brier_skill", "ground_truth_resolver: .* missing"),
        # today a callable with a required parameter the engine never passes loaded, then failed
        # with TypeError at the checkpoint
        ("emission_builder", "tests.test_engine_units:needs_an_extra_parameter", "requires parameter.*pool_size"),
        ("output_schema", "competitions.btc_updown.logic:validate_output", "pydantic BaseModel"),
    ],
)
def test_wiring_errors_name_the_slot_and_callable(slot, path, message):
    with pytest.raises(WiringError, match=message):
        _rules(**{slot: path}).check_wiring()


def test_parameters_with_defaults_are_allowed():
    _rules(emission_builder="tests.test_engine_units:takes_extras_with_defaults").check_wiring()


def test_a_bad_callable_fails_the_code_location_load():
    from competitions.btc_updown.definitions import SPEC
    from crunch_assets.definitions import build_competition_definitions
    from resources.feeds.synthetic import SyntheticFeed

    with pytest.raises(WiringError, match="scoring_function"):
        build_competition_definitions(
            SPEC, _rules(scoring_function="competitions.btc_updown.logic:nope"), feed=SyntheticFeed(), models_dir=".",
        )


@pytest.mark.parametrize(
    "feed_factory, message",
    [
        (lambda: __import__("resources.feeds.binance", fromlist=["BinanceFeed"]).BinanceFeed(symbols={"ETH": "ETHUSDT"}), "BTC"),
        (lambda: __import__("resources.feeds.pyth", fromlist=["PythFeed"]).PythFeed(feed_ids={"BTC": "0x1234"}), "BTC"),
        (lambda: __import__("resources.feeds.binance", fromlist=["BinanceFeed"]).BinanceFeed(kind="tick", granularity_seconds=0), "klines"),
    ],
)
def test_a_feed_that_cannot_serve_the_competition_fails_the_load(feed_factory, message):
    from competitions.btc_updown.definitions import build_definitions

    with pytest.raises(Exception, match=message):
        build_definitions(feed=feed_factory())


def test_call_with_deadline_returns_raises_or_gives_up_in_time():
    import time as clock

    from crunch_assets.stages import FeedTooSlow, call_with_deadline

    assert call_with_deadline(lambda: 42, 1.0) == 42
    with pytest.raises(ZeroDivisionError):
        call_with_deadline(lambda: 1 / 0, 1.0)
    began = clock.monotonic()
    with pytest.raises(FeedTooSlow, match="within 0.2 s"):
        call_with_deadline(lambda: clock.sleep(5), 0.2)
    assert clock.monotonic() - began < 2.0


@pytest.mark.parametrize("in_flight", [1, 2])
def test_write_behind_bounds_the_writes_in_flight_and_raises_a_failed_write(in_flight):
    import threading
    import time as clock

    from crunch_assets.stages import WriteBehind

    written, writing, most_in_flight, confirmed = [], [0], [0], []
    lock = threading.Lock()

    def write(batch):
        with lock:
            writing[0] += 1
            most_in_flight[0] = max(most_in_flight[0], writing[0])
        clock.sleep(0.02)
        written.append(batch)
        with lock:
            writing[0] -= 1
        return len(batch)

    with WriteBehind(in_flight) as writer:
        for n in range(1, 6):
            writer.submit(write, list(range(n)), then=confirmed.append)
    assert sorted(len(b) for b in written) == [1, 2, 3, 4, 5]  # all committed by the end of the `with`
    if in_flight == 1:
        assert [len(b) for b in written] == [1, 2, 3, 4, 5]  # one at a time: in order
    assert confirmed == [1, 2, 3, 4, 5]  # confirmations in submission order either way
    assert most_in_flight[0] == in_flight

    def failing(batch):
        raise RuntimeError(f"database refused {batch}")

    written.clear()
    with pytest.raises(RuntimeError, match="refused second"):
        with WriteBehind(in_flight) as writer:
            writer.submit(write, "first")
            writer.submit(failing, "second")
            writer.submit(write, "third")
            writer.submit(write, "fourth")  # by now the second's error is raised: never written
    assert "fourth" not in written and "first" in written

    with pytest.raises(RuntimeError, match="refused at the end"):  # the last write's error is not lost
        with WriteBehind(in_flight) as writer:
            writer.submit(failing, "at the end")

    with pytest.raises(KeyError):  # the caller's own error wins; the write in flight still completes
        with WriteBehind(in_flight) as writer:
            writer.submit(write, "in flight")
            raise KeyError("caller")
    assert written[-1] == "in flight"


def test_score_chunks_are_long_enough_for_the_copy_path():
    from competitions.btc_updown.definitions import SPEC  # one scope, a cycle a minute
    from crunch_assets.defs.scores.assets import SCORE_CHUNK_HOURS, score_chunk_hours
    from resources.store.bulk import COPY_MIN_ROWS

    assert score_chunk_hours(SPEC, 10) == SCORE_CHUNK_HOURS == 6  # 3,600 rows a chunk already
    assert score_chunk_hours(SPEC, 3) == 12 and 12 * 60 * 3 >= COPY_MIN_ROWS > 11 * 60 * 3
    assert score_chunk_hours(SPEC, 1) == score_chunk_hours(SPEC, 0) == 24  # never more than a day
