"""The engine's pure parts: ranking, windows, emission, spec and wiring validation."""

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from crunch_assets.ranking import SnapshotRow, rank_models, tiered_emission, weighted_means, window_scores
from crunch_assets.rules import CallableRules, WiringError
from crunch_assets.spec import CompetitionSpec, Scope, SpecError

T0 = datetime(2025, 1, 8, tzinfo=timezone.utc)


def _row(model, hours_before, count, mean):
    start = T0 - timedelta(hours=hours_before)
    return SnapshotRow(model, start, start + timedelta(hours=1), count, count * mean)


def test_checkpoint_mean_is_count_weighted():
    means = weighted_means([_row("a", 2, 100, 0.8), _row("a", 1, 50, 0.6)])
    assert means["a"][0] == pytest.approx(0.733333333, abs=1e-9) and means["a"][1] == 150


def test_windows_are_real_time_windows():
    rows = [_row("a", 30, 60, 0.2), _row("a", 2, 60, 0.9)]  # one snapshot 30 h ago, one 2 h ago
    recent = window_scores(rows, T0, 86400, {"a": T0 - timedelta(hours=30)})
    anchor = window_scores(rows, T0, 7 * 86400, {"a": T0 - timedelta(hours=30)})
    assert recent["a"]["value"] == pytest.approx(0.9) and recent["a"]["complete"]
    assert anchor["a"]["value"] == pytest.approx(0.55) and not anchor["a"]["complete"]
    assert anchor["a"]["coverage"] == pytest.approx(30 / 168, abs=1e-6)


def test_ranking_breaks_ties_by_model_id_not_insertion_order():
    assert rank_models({"zeta": 0.5, "alpha": 0.5, "mid": 0.9, "none": None}) == ["mid", "alpha", "zeta", "none"]
    assert rank_models({"a": 1.0, "b": 2.0}, descending=False) == ["a", "b"]


def test_emission_rejects_tiers_over_100_percent():
    with pytest.raises(ValueError, match="exceed 100"):
        tiered_emission(3, ((1, 90.0), (3, 10.0)))


BASE_SPEC = CompetitionSpec(slug="demo", start=datetime(2025, 1, 1, tzinfo=timezone.utc), scopes=(Scope("BTC", 60, 60),))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"slug": "Bad-Slug"}, "slug"),
        ({"start": datetime(2025, 1, 1)}, "timezone-aware"),
        ({"start": datetime(2025, 1, 1, 0, 30, tzinfo=timezone.utc)}, "hour boundary"),
        ({"scopes": ()}, "at least one"),
        ({"scopes": (Scope("BTC", 60, 7),)}, "divide 3600"),
        ({"scopes": (Scope("BTC", 7200, 60),)}, "resolve_horizon_seconds"),
        ({"checkpoint_interval_seconds": 1000}, "checkpoint_interval_seconds"),
        ({"ranking_key": "score"}, "ranking_key 'score'"),
    ],
)
def test_spec_errors_name_the_field(change, message):
    with pytest.raises(SpecError, match=message):
        replace(BASE_SPEC, **change)


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


@pytest.mark.parametrize(
    "slot, path, message",
    [
        ("scoring_function", "competitions.btc_updown.logic:brier_skil", "scoring_function: module .* has no attribute 'brier_skil'"),
        ("input_builder", "competitions.btc_updown.logik:build_inference_input", "input_builder: cannot import module"),
        ("emission_builder", "competitions.btc_updown.logic.build_emission", "emission_builder: .* not an import path"),
        ("output_validator", "competitions.btc_updown.logic:MAX_MIXTURE_COMPONENTS", "output_validator: .* not callable"),
        ("ground_truth_resolver", "competitions.btc_updown.logic:brier_skill", "ground_truth_resolver: .* missing"),
    ],
)
def test_wiring_errors_name_the_slot_and_callable(slot, path, message):
    with pytest.raises(WiringError, match=message):
        _rules(**{slot: path}).check_wiring()


def test_a_bad_callable_fails_the_code_location_load():
    from competitions.btc_updown.definitions import SPEC
    from crunch_assets.definitions import build_competition_definitions
    from resources.feeds.synthetic import SyntheticFeed
    from resources.model_runners.local import LocalModelRunner

    with pytest.raises(WiringError, match="scoring_function"):
        build_competition_definitions(
            SPEC, _rules(scoring_function="competitions.btc_updown.logic:nope"), SyntheticFeed(),
            LocalModelRunner(models_dir="."),
        )


@pytest.mark.parametrize(
    "feed_factory, message",
    [
        (lambda: __import__("resources.feeds.binance", fromlist=["BinanceFeed"]).BinanceFeed(symbols={"ETH": "ETHUSDT"}), "BTC"),
        (lambda: __import__("resources.feeds.pyth", fromlist=["PythFeed"]).PythFeed(feed_ids={"BTC": "0x1234"}), "BTC"),
    ],
)
def test_a_feed_that_cannot_serve_a_subject_fails_the_load(feed_factory, message):
    from competitions.btc_updown.definitions import build_definitions

    with pytest.raises(Exception, match=message):
        build_definitions(feed=feed_factory())


def test_call_with_deadline_returns_raises_or_gives_up_in_time():
    import time as clock

    from crunch_assets.assets import FeedTooSlow, call_with_deadline

    assert call_with_deadline(lambda: 42, 1.0) == 42
    with pytest.raises(ZeroDivisionError):
        call_with_deadline(lambda: 1 / 0, 1.0)
    began = clock.monotonic()
    with pytest.raises(FeedTooSlow, match="within 0.2 s"):
        call_with_deadline(lambda: clock.sleep(5), 0.2)
    assert clock.monotonic() - began < 2.0
