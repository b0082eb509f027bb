"""btc_updown's callables against the reference fixtures (pure functions, no Dagster)."""

from datetime import datetime, timedelta, timezone

import pytest

from competitions.btc_updown import logic
from crunch_assets.records import LoadedRecords
from crunch_assets.rules import TruthMissing
from crunch_assets.spec import Scope
from resources.feeds.base import Candle, FeedStream

SCOPE = Scope("BTC", 60, 60)
T0 = datetime(2025, 1, 7, 12, 0, tzinfo=timezone.utc)
UP = {"y_up": True, "return": 0.01}
DOWN = {"y_up": False, "return": -0.01}


@pytest.mark.parametrize(
    "p_up, truth, expected",
    [(0.8, UP, 0.96), (0.8, DOWN, 0.36), (0.5, UP, 0.75), (0.5, DOWN, 0.75), (1.0, UP, 1.0), (1.0, DOWN, 0.0)],
)
def test_brier_skill_reference_fixtures(p_up, truth, expected):
    result = logic.brier_skill(SCOPE, logic.validate_output(SCOPE, {"p_up": p_up}), truth)
    assert result["success"] is True
    assert result["value"] == pytest.approx(expected, abs=1e-12)


def test_density_output_scores_like_the_reference():
    density = {"type": "builtin", "name": "norm", "params": {"loc": 1.0, "scale": 0.5}}
    normalised = logic.validate_output(SCOPE, density)
    assert normalised["p_up"] == pytest.approx(0.9772498681, abs=1e-10)
    assert logic.brier_skill(SCOPE, normalised, UP)["value"] == pytest.approx(0.9994824315, abs=1e-10)


@pytest.mark.parametrize("loc, expected", [(1.0, 1.0), (-1.0, 0.0), (0.0, 0.5)])
def test_degenerate_normal(loc, expected):
    density = {"type": "builtin", "name": "norm", "params": {"loc": loc, "scale": 0.0}}
    assert logic.density_p_up(density) == expected


def test_mixture_is_weight_normalised_average():
    up = {"type": "builtin", "name": "norm", "params": {"loc": 1.0, "scale": 0.0}}
    down = {"type": "builtin", "name": "norm", "params": {"loc": -1.0, "scale": 0.0}}
    mixture = {"type": "mixture", "components": [{"density": up, "weight": 3}, {"density": down, "weight": 1}]}
    assert logic.density_p_up(mixture) == pytest.approx(0.75)


def test_output_without_p_up_does_not_score():
    result = logic.brier_skill(SCOPE, {"something": 1}, UP)
    assert result == {"value": None, "success": False, "failed_reason": "output has no numeric p_up"}


@pytest.mark.parametrize(
    "output, reason",
    [
        ("0.7", "must be an object"),
        ({"p_up": 1.5}, "in [0, 1]"),
        ({"p_up": float("nan")}, "finite number"),
        ({"p_up": True}, "finite number"),
        ({"p_up": "high"}, "finite number"),
        ({"type": "builtin", "name": "cauchy", "params": {}}, "only 'norm'"),
        ({"type": "mixture", "components": []}, "non-empty"),
        ({"value": 1}, "must contain p_up"),
    ],
)
def test_invalid_outputs_are_rejected_with_a_reason(output, reason):
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        logic.validate_output(SCOPE, output)


def test_position_return_alternative_scoring():
    truth = {"y_up": True, "return": (110 - 100) / 100}
    values = [logic.position_return(SCOPE, {"p_up": p}, truth)["value"] for p in (1.0, 0.0, 0.75)]
    assert values == pytest.approx([0.10, -0.10, 0.05])


STREAM = FeedStream("test", "BTC", "candle", 60)


def _view(*minute_closes, since=T0 - timedelta(hours=1), as_of=T0 + timedelta(hours=1)):
    """Stored 1-minute candles closing at T0 + m minutes with the given closes."""
    candles = [Candle("BTC", T0 + timedelta(minutes=m - 1), close, close, close, close, 1.0) for m, close in minute_closes]
    return LoadedRecords({STREAM: candles}).view(since, as_of, include_since=True)


def test_ground_truth_from_stored_prices():
    truth = logic.resolve_ground_truth(SCOPE, T0, T0 + timedelta(seconds=60), _view((-1, 99.0), (0, 100.0), (1, 101.0)), 30)
    assert truth["entry_price"] == 100.0 and truth["resolved_price"] == 101.0
    assert truth["y_up"] is True and truth["return"] == pytest.approx(0.01)


def test_ground_truth_is_missing_when_a_price_is_missing_or_stale_and_names_which():
    """Issue: a void reason named the resolution instant when the entry price was what was missing."""
    records = _view((0, 100.0), (1, 101.0))
    assert logic.resolve_ground_truth(SCOPE, T0, T0 + timedelta(seconds=60), records, 30) is not None
    # resolved price missing: 5 minutes later the last price is too old to stand for it
    resolution = f"no BTC price for the resolution at {(T0 + timedelta(minutes=5)).isoformat()} (none observed in the 30 s"
    with pytest.raises(TruthMissing) as missing:
        logic.resolve_ground_truth(SCOPE, T0, T0 + timedelta(minutes=5), records, 30)
    assert str(missing.value).startswith(resolution)
    # entry missing: nothing at or before the cycle (the resolution price, T0's close, is there)
    with pytest.raises(TruthMissing) as missing:
        logic.resolve_ground_truth(SCOPE, T0 - timedelta(minutes=1), T0, records, 30)
    assert str(missing.value) == (f"no BTC price for the entry at {(T0 - timedelta(minutes=1)).isoformat()} "
                                  "(none observed in the 30 s up to it)")
    # both missing
    with pytest.raises(TruthMissing) as missing:
        logic.resolve_ground_truth(SCOPE, T0 + timedelta(minutes=3), T0 + timedelta(minutes=4), records, 30)
    assert str(missing.value) == (f"no BTC price for the entry at {(T0 + timedelta(minutes=3)).isoformat()} nor for the "
                                  f"resolution at {(T0 + timedelta(minutes=4)).isoformat()} (none observed in the 30 s up to each)")


def test_a_missing_resolution_price_is_never_the_entry_price():
    """Issue: with a staleness bound above the horizon, a missing resolution candle made the entry
    observation itself the 'resolved' price, and p_up 0.9 scored 0.19 as 'not up'."""
    records = _view((0, 100.0))  # the candle closing at T0 + 60 s is missing
    for staleness in (59, 120):
        with pytest.raises(TruthMissing, match="no BTC price for the resolution at"):
            logic.resolve_ground_truth(SCOPE, T0, T0 + timedelta(seconds=60), records, staleness)


def test_flat_price_is_not_up():
    truth = logic.resolve_ground_truth(SCOPE, T0, T0 + timedelta(seconds=60), _view((0, 100.0), (1, 100.0)), 30)
    assert truth["y_up"] is False


def test_input_contains_only_the_subjects_candles_closed_by_the_cycle():
    eth = FeedStream("test", "ETH", "candle", 60)
    loaded = LoadedRecords({
        STREAM: [Candle("BTC", T0 - timedelta(minutes=2), 1, 2, 0.5, 1.5, 3.0),
                 Candle("BTC", T0, 9, 9, 9, 9, 9.0)],  # closes after the cycle: not seen
        eth: [Candle("ETH", T0 - timedelta(minutes=1), 1, 1, 1, 1, 0)],
    })
    payload = logic.build_inference_input(SCOPE, T0, loaded.view(T0 - timedelta(hours=1), T0))
    assert payload == {
        "symbol": "BTC",
        "asof_ts": int(T0.timestamp()),
        "candles_1m": [{"ts": int((T0 - timedelta(minutes=2)).timestamp()), "open": 1, "high": 2, "low": 0.5,
                        "close": 1.5, "volume": 3.0}],
    }


def test_model_calls_are_feed_update_then_predict():
    from resources.model_runners.base import MethodCall

    payload = {"symbol": "BTC", "asof_ts": 0, "candles_1m": []}
    assert logic.build_model_calls(SCOPE, payload) == [
        MethodCall("feed_update", (payload,)),
        MethodCall("predict", ("BTC", 60, 60)),
    ]
